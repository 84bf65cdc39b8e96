"""The ``cohortflow`` command line.

    cohortflow run --data DIR --out DIR [--settings FILE]
    cohortflow demo [--data DIR] [--out DIR]
    cohortflow cohorts list --root DIR [--target T] [--stage S] [--view V] [--batch B] [--attempt N] [--json]
    cohortflow cohorts show ID --root DIR
    cohortflow cohorts diff ID1 ID2 --root DIR
    cohortflow reindex --root DIR
    cohortflow verify --root DIR [--batch B]
    cohortflow migrate --from OLD --to NEW
    cohortflow stacking-data --root DIR --batch B --attempt N --target T [--export DIR [--output-name NAME]]
    cohortflow stack --root DIR --batch B --attempt N --target T [--out DIR] [--output-name NAME]

Errors the user can act on (bad data, missing or corrupt artifacts, a sealed attempt)
print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cohortflow.errors import CohortflowError

# OpenMP threads of LightGBM/XGBoost spin-waiting against each other stall 2-core runs;
# set before either library starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def demo_settings() -> Path:
    """``config/demo.yaml`` (in this checkout, and installed: ``cohortflow_dagster.config``)."""
    from importlib.util import find_spec

    spec = find_spec("cohortflow_dagster.config")
    folder = next(iter(spec.submodule_search_locations)) if spec else "config"
    return Path(folder).joinpath("demo.yaml")


def _default(name: str, fallback: str) -> str:
    return os.environ.get(name, fallback)


def _say(message: str) -> None:
    print(f"[cohortflow] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run
class Progress:
    """One line per finished step; on a terminal, also a bar over the attempt's steps."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, step: str, partition: str, seconds: float, done: int, total: int) -> None:
        line = f"[cohortflow] {done:>2}/{total} {step:<34} {partition}  {seconds:6.1f} s"
        if self.tty:
            width = 30
            filled = int(width * done / max(total, 1))
            bar = "#" * filled + "." * (width - filled)
            print(
                f"\r\033[K{line}\n[{bar}] {done}/{total} steps",
                end="",
                file=self.stream,
                flush=True,
            )
            if done >= total:
                print(file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def _run(data: str, out: str, settings: str) -> int:
    from cohortflow_dagster.cli.runner import run_universe, summary_text

    result = run_universe(
        data_dir=data, output_root=out, settings_path=settings, log=_say, on_step=Progress()
    )
    print(summary_text(result))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args.data, args.out, args.settings or "")


def cmd_demo(args: argparse.Namespace) -> int:
    from cohortflow.sampledata import write_sample_universe

    written = write_sample_universe(Path(args.data))
    _say(f"built-in data: {len(written)} files from bokeh_sampledata.stocks in {args.data}")
    return _run(args.data, args.out, str(args.settings))


# --------------------------------------------------------------------------- cohorts
def _index(root: str):
    from cohortflow.index import CohortIndex

    index = CohortIndex(root)
    if not index.exists():
        _say(f"no index under {root}: building it from the tree (cohortflow reindex)")
        index.rebuild()
    return index


def _reasons(root: str) -> dict[tuple[str, int], str]:
    """(batch, attempt) -> why the attempt exists (the batch registry)."""
    from cohortflow.registry import BatchRegistry

    try:
        return {
            (r.batch, a.attempt): a.reason.value
            for r in BatchRegistry(root).list()
            for a in r.attempts
        }
    except CohortflowError as exc:
        _say(f"the batch registry could not be read: {exc}")
        return {}


def cmd_cohorts_list(args: argparse.Namespace) -> int:
    if "://" not in args.root and not Path(args.root).is_dir():
        raise CohortflowError(f"{args.root}: no such output root")
    records = _index(args.root).list(
        target=args.target,
        stage=args.stage,
        view=args.view,
        batch=args.batch,
        attempt=args.attempt,
        check_disk=True,
    )
    reasons = _reasons(args.root)
    rows = [
        {
            **r.to_dict(),
            "reason": reasons.get(
                (r.batch, r.attempt), "-" if r.origin == "cohortflow" else "external"
            ),
        }
        for r in records
    ]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    print(
        f"{'cohort_id':<60} {'target':<12} {'stage':<18} {'view':<16} {'symbol':<8} "
        f"{'batch':<13} att {'reason':<17} {'origin':<10} layout"
    )
    for r in rows:
        print(
            f"{r['cohort_id']:<60} {r['target']:<12} {r['stage']:<18} {r['view']:<16} "
            f"{r['symbol'] or '-':<8} {r['batch'] or '-':<13} {r['attempt']:>3} "
            f"{r['reason']:<17} {r['origin']:<10} {r['layout']}"
        )
    print(f"{len(rows)} cohorts", file=sys.stderr)
    return 0


def _load_cohort(root: str, cohort_id: str) -> tuple[Any, Any]:
    from cohortflow.index import find_cohort
    from cohortflow.store import Store

    record = find_cohort(root, cohort_id)
    store = Store(root)
    return record, store.read_cohort_dir(record.dir(store.root), record)


def cmd_cohorts_show(args: argparse.Namespace) -> int:
    record, view = _load_cohort(args.root, args.cohort_id)
    doc = {
        "record": record.to_dict(),
        "scoring_schema": view.snapshot.get("scoring_schema_read"),
        "metadata.json": view.metadata,
        "metrics.json": view.metrics,
        "snapshot.json": view.snapshot,
    }
    for name, value in (("diff_prev.json", view.diff_prev), ("drift.json", view.drift)):
        if value is not None:
            doc[name] = value
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def cmd_cohorts_diff(args: argparse.Namespace) -> int:
    from cohortflow.canonical import sha256_hex
    from cohortflow.errors import ArtifactNotFoundError
    from cohortflow.formats import read_bytes
    from cohortflow.layout import as_root
    from cohortflow.snapshots import Baseline, build_diff_prev

    rec_a, a = _load_cohort(args.root, args.a)
    _, b = _load_cohort(args.root, args.b)
    # the baseline digest as the store computes it: sha256 of snapshot.json's bytes
    try:
        digest = sha256_hex(read_bytes(rec_a.file(as_root(args.root), "snapshot.json")))
    except ArtifactNotFoundError:
        digest = None  # a cohort of an older layout without one
    baseline = Baseline(rec_a.path, a.snapshot, a.metadata, digest)
    diff = build_diff_prev(
        {**b.snapshot, "settings_values": b.metadata.get("settings", {})}, baseline
    )
    diff["scoring_schema"] = {
        args.a: a.snapshot.get("scoring_schema_read"),
        args.b: b.snapshot.get("scoring_schema_read"),
    }
    print(json.dumps(diff, indent=2, sort_keys=True))
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from cohortflow.index import CohortIndex

    problems: list[str] = []
    count = CohortIndex(args.root).rebuild(problems)
    for line in problems:
        print(f"skipped: {line}")
    print(
        f"indexed {count} cohorts under {args.root}"
        + (f"; skipped {len(problems)}" if problems else "")
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cohortflow.verify import verify_root

    if "://" not in args.root and not Path(args.root).is_dir():
        raise CohortflowError(f"{args.root}: no such output root")
    batch = args.batch.removeprefix("batch_") if args.batch else None
    report = verify_root(args.root, batch)
    for problem in report.problems or []:
        print(problem.line())
    failed = report.failed
    print(
        f"verified {report.folders} attempt folders under {args.root}: "
        + (f"{len(failed)} problem(s)" if failed else "every file matches its seal")
    )
    return 1 if failed else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from cohortflow.migrate import migrate

    report = migrate(args.old, args.new)
    for item in report.items:
        if item.status != "migrated":
            print(f"{item.status}: {item.old} ({item.reason})")
    print(f"migrated={report.migrated} skipped={report.skipped} failed={report.failed}")
    return 1 if report.failed else 0


def cmd_stacking_data(args: argparse.Namespace) -> int:
    from cohortflow.loader import export_stacking_data, load_stacking_data

    data = load_stacking_data(args.root, args.batch, args.attempt, args.target)
    if args.export:
        folder = export_stacking_data(data, args.export, args.output_name)
        print(f"exported to {folder}")
        return 0
    meta = {k: v for k, v in data.metadata.items() if k != "fold_plan"}
    print(json.dumps(meta, indent=2, sort_keys=True, default=str))
    print(data.frame.head(10).to_string(index=False))
    print(f"{len(data.frame)} rows", file=sys.stderr)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from cohortflow.fsio import atomic_write_many
    from cohortflow.layout import as_root, new_run_id, run_file, stack_runs_dir, unique_run_dir
    from cohortflow.loader import fit_stack, load_stacking_data
    from cohortflow.registry import BatchRegistry
    from cohortflow.settings import Settings, settings_from_dict

    data = load_stacking_data(args.root, args.batch, args.attempt, args.target)
    batch = data.metadata["batch"]
    record = BatchRegistry(args.root).get(batch).attempt(args.attempt)
    settings = settings_from_dict(dict(record.settings)) if record else Settings()
    parent = (
        as_root(args.out)
        if args.out
        else stack_runs_dir(args.root, batch, args.attempt, args.target)
    )
    run_id = args.output_name or new_run_id()
    files = fit_stack(data, settings, run_id, args.root)
    folder = unique_run_dir(parent, run_id)
    atomic_write_many([(run_file(folder, name), payload) for name, payload in files.items()])
    _say(f"meta-learner fitted on {data.metadata['rows']} OOF rows of {data.metadata['path']}")
    print(folder)
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cohortflow", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="register the universe in DIR and run the attempts it needs")
    run.add_argument("--data", default=_default("COHORTFLOW_DATA_DIR", "data/bars"))
    run.add_argument("--out", default=_default("COHORTFLOW_OUTPUT_ROOT", "output"))
    run.add_argument("--settings", default=_default("COHORTFLOW_SETTINGS", ""))
    run.set_defaults(fn=cmd_run)

    demo = sub.add_parser("demo", help="copy the built-in real data and run the whole graph")
    demo.add_argument("--data", default=_default("COHORTFLOW_DATA_DIR", "data/bars"))
    demo.add_argument("--out", default=_default("COHORTFLOW_OUTPUT_ROOT", "output"))
    demo.add_argument("--settings", default=str(demo_settings()))
    demo.set_defaults(fn=cmd_demo)

    cohorts = sub.add_parser("cohorts", help="list, show and diff cohorts").add_subparsers(
        dest="cohorts_command", required=True
    )
    root_default = _default("COHORTFLOW_OUTPUT_ROOT", "output")
    ls = cohorts.add_parser("list")
    ls.add_argument("--root", default=root_default)
    for opt in ("target", "stage", "view", "batch"):
        ls.add_argument(f"--{opt}")
    ls.add_argument("--attempt", type=int)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_cohorts_list)
    show = cohorts.add_parser("show")
    show.add_argument("cohort_id")
    show.add_argument("--root", default=root_default)
    show.set_defaults(fn=cmd_cohorts_show)
    diff = cohorts.add_parser("diff")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--root", default=root_default)
    diff.set_defaults(fn=cmd_cohorts_diff)

    reindex = sub.add_parser("reindex", help="rebuild the cohort index from the tree")
    reindex.add_argument("--root", default=root_default)
    reindex.set_defaults(fn=cmd_reindex)

    verify = sub.add_parser(
        "verify", help="check every attempt's files against their seals and manifests"
    )
    verify.add_argument("--root", default=root_default)
    verify.add_argument("--batch")
    verify.set_defaults(fn=cmd_verify)

    mig = sub.add_parser("migrate", help="copy an older-layout tree into the canonical layout")
    mig.add_argument("--from", dest="old", required=True)
    mig.add_argument("--to", dest="new", required=True)
    mig.set_defaults(fn=cmd_migrate)

    def attempt_parser(name: str, help: str) -> argparse.ArgumentParser:
        """A command on one batch × attempt × target of a root."""
        cmd = sub.add_parser(name, help=help)
        cmd.add_argument("--root", default=root_default)
        cmd.add_argument("--batch", required=True)
        cmd.add_argument("--attempt", type=int, required=True)
        cmd.add_argument("--target", required=True)
        return cmd

    sd = attempt_parser("stacking-data", "the OOF dataset of a batch × attempt × target")
    sd.add_argument("--export", help="copy it into a new folder under this one")
    sd.add_argument("--output-name", help="name of that folder (default: a new run id)")
    sd.set_defaults(fn=cmd_stacking_data)

    st = attempt_parser(
        "stack", "fit the meta-learner on a stored OOF dataset into a new run folder"
    )
    st.add_argument("--out", help="parent folder of the run folder (default: ROOT/stacks/...)")
    st.add_argument("--output-name", help="name of the run folder (default: a new run id)")
    st.set_defaults(fn=cmd_stack)
    return p


def main(argv: list[str] | None = None) -> int:
    # `cohortflow cohorts list | head` ends quietly, as a Unix tool does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # the command reports what matters itself; library warnings stay in the Dagster run logs
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # the core's INFO lines go to the Dagster run logs (the UI), not to this terminal
    logging.getLogger("cohortflow").propagate = False
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CohortflowError as exc:
        print(f"cohortflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
