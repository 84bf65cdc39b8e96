"""The shape of the code: one-way imports, no cycles, no private Dagster API, and only
:mod:`cohortflow.layout` builds paths under the output root."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
# the shell's subpackages are the top-level folders (pyproject.toml, package-dir)
SHELL = {
    "assets": "cohortflow_dagster.assets",
    "cli": "cohortflow_dagster.cli",
    "io_managers": "cohortflow_dagster.io_managers",
    "resources": "cohortflow_dagster.resources",
    "sensors": "cohortflow_dagster.sensors",
    "cohortflow_dagster": "cohortflow_dagster",
    "cohortflow": "cohortflow",
}


def product_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the core and the shell."""
    out = {}
    for folder, package in SHELL.items():
        for path in sorted((PROJECT / folder).rglob("*.py")):
            rel = path.relative_to(PROJECT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


# Parsed in a fresh interpreter: CPython 3.11.7's compile() can fail with "SystemError: AST
# constructor recursion depth mismatch" in a process whose recursion limit was changed
# (gh-106905; a library in an earlier test may change it). One subprocess reads them all.
_READ_IMPORTS = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    rows = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            rows += [["import", a.name, 0, []] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            rows.append(["from", node.module or "", node.level, [a.name for a in node.names]])
    out[path] = rows
print(json.dumps(out))
"""


@functools.cache
def _read_imports(paths: tuple[str, ...]) -> dict[str, list]:
    done = subprocess.run(
        [sys.executable, "-c", _READ_IMPORTS, *paths], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@functools.cache
def _project_files() -> tuple[str, ...]:
    return tuple(str(p) for p in sorted(PROJECT.glob("*/**/*.py")) if ".venv" not in p.parts)


def imports_of(path: Path, module: str) -> Iterator[str]:
    """Every module a file imports, at any level (a lazy import is still a dependency)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    rows = _read_imports(_project_files()).get(str(path))
    if rows is None:  # a file made by a test
        rows = _read_imports((str(path),))[str(path)]
    for kind, name, level, names in rows:
        if kind == "import":
            yield name
            continue
        base = name
        if level:
            anchor = package.rsplit(".", level - 1)[0] if level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        yield base
        for alias in names:
            yield f"{base}.{alias}"


def internal_graph() -> dict[str, set[str]]:
    modules = product_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {
            target for target in imports_of(path, name) if target in modules and target != name
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(internal_graph()) == []


# which layer may import which: data flows one way, from the shell's entry down to the core
LAYERS = {
    "cohortflow": set(),  # the core imports no shell module
    "cohortflow_dagster.partitions": {"cohortflow"},
    "cohortflow_dagster.metadata": {"cohortflow"},
    "cohortflow_dagster.resources": {"cohortflow"},
    "cohortflow_dagster.io_managers": {
        "cohortflow",
        "cohortflow_dagster.partitions",
        "cohortflow_dagster.metadata",
        "cohortflow_dagster.resources",
    },
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_only_run_downwards(layer: str):
    allowed = LAYERS[layer] | {layer}
    graph = internal_graph()
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    )
    assert offenders == []


def test_the_core_never_imports_dagster():
    modules = product_modules()
    offenders = [
        f"{name}: {target}"
        for name, path in modules.items()
        if name.split(".")[0] == "cohortflow"
        for target in imports_of(path, name)
        if target.split(".")[0] in ("dagster", "dagster_dg_cli")
        or target.startswith("cohortflow_dagster")
    ]
    assert offenders == []


def test_no_private_dagster_api_in_product_code():
    offenders = [
        f"{name}: {target}"
        for name, path in product_modules().items()
        for target in imports_of(path, name)
        if re.match(r"dagster\._|dagster_\w+\._", target)
    ]
    assert offenders == []


def test_no_generic_top_level_names_are_imported():
    """Code imports the shell as cohortflow_dagster.*, never as a bare folder name (which
    would be a second copy of the module, and a generic name on a user's path)."""
    generic = set(SHELL) - {"cohortflow", "cohortflow_dagster"} | {"definitions", "partitions"}
    offenders = []
    files = [*PROJECT.glob("tests/*.py"), *PROJECT.glob("bench/*.py"), *product_modules().values()]
    for path in files:
        for target in imports_of(path, "x.y"):
            if target.split(".")[0] in generic:
                offenders.append(f"{path.relative_to(PROJECT)}: {target}")
    assert offenders == []


def test_no_pickle_in_the_code():
    hits = []
    for name, path in product_modules().items():
        for target in imports_of(path, name):
            if target.split(".")[0] in ("pickle", "cloudpickle", "joblib", "dill"):
                hits.append(f"{name}: {target}")
    assert hits == []


# --------------------------------------------------------------------------- path building
def _record_joins(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[tuple[str, str]]:
    """Every path join whose result lies under ``root``, with the module that made it."""
    import sys
    from pathlib import PurePath

    joins: list[tuple[str, str]] = []
    under = str(root.resolve())
    real_div, real_joinpath, real_join = PurePath.__truediv__, PurePath.joinpath, os.path.join

    def note(result: object) -> None:
        text = os.path.abspath(str(result))
        if text == under or text.startswith(under + os.sep):
            frame = sys._getframe(2)
            joins.append((frame.f_globals.get("__name__", "?"), text))

    def div(self, key):
        result = real_div(self, key)
        note(result)
        return result

    def joinpath(self, *parts):
        result = real_joinpath(self, *parts)
        note(result)
        return result

    def join(a, *parts):
        result = real_join(a, *parts)
        note(result)
        return result

    monkeypatch.setattr(PurePath, "__truediv__", div)
    monkeypatch.setattr(PurePath, "joinpath", joinpath)
    monkeypatch.setattr(os.path, "join", join)
    return joins


# modules that may join paths under the output root: layout builds them; fsio names the
# temporary sibling of a file it writes atomically
PATH_BUILDERS = {"cohortflow.layout", "cohortflow.fsio"}


@pytest.mark.slow
def test_only_layout_joins_paths_under_the_output_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dagster_home: Path
):
    """The whole graph and every command of the CLI, on a small universe: each path under
    the output root they touch was built by cohortflow.layout."""
    import json

    from cohortflow import synthetic
    from cohortflow_dagster.cli.main import main

    data, out = tmp_path / "data", tmp_path / "out"
    synthetic.generate(data, fmt="parquet", n_symbols=4, n_bars=400, n_noise=2, seed=5)
    settings = tmp_path / "one.yaml"
    settings.write_text(
        (PROJECT / "config" / "fast.yaml")
        .read_text()
        .replace("horizons: [5, 10]", "horizons: [5]")
        .replace("attempt_limit: 2", "attempt_limit: 1")
    )
    out.mkdir()
    joins = _record_joins(monkeypatch, out)
    assert main(["run", "--data", str(data), "--out", str(out), "--settings", str(settings)]) == 0
    batch = json.loads(next((out / "_registry").iterdir()).read_text())["batch"]
    common = ["--root", str(out)]
    assert main(["cohorts", "list", *common, "--json"]) == 0
    assert main(["reindex", *common]) == 0
    assert main(["verify", *common]) == 0
    assert (
        main(
            ["stacking-data", *common, "--batch", batch, "--attempt", "0", "--target", "fwd_ret_5"]
        )
        == 0
    )
    assert (
        main(["stack", *common, "--batch", batch, "--attempt", "0", "--target", "fwd_ret_5"]) == 0
    )
    assert main(["migrate", "--from", str(out), "--to", str(out / "copy")]) == 0
    from cohortflow.index import CohortIndex

    ids = [r.cohort_id for r in CohortIndex(out).list()][:2]
    assert main(["cohorts", "show", ids[0], *common]) == 0
    assert main(["cohorts", "diff", ids[0], ids[1], *common]) == 0
    assert joins, "the instrumentation saw no join at all"
    builders = {module for module, _ in joins}
    elsewhere = sorted(
        {
            (m, p)
            for m, p in joins
            if m not in PATH_BUILDERS and m.startswith(("cohortflow", "cohortflow_dagster"))
        }
    )
    assert elsewhere == [], sorted({m for m, _ in elsewhere})
    assert "cohortflow.layout" in builders
