"""The ``cohortflow`` command line.

    cohortflow run --data DIR --out DIR [--settings FILE]
    cohortflow demo [--data DIR] [--out DIR]
    cohortflow cohorts list --root DIR [--target T] [--stage S] [--view V] [--batch B] [--attempt N] [--json]
    cohortflow cohorts show ID --root DIR
    cohortflow cohorts diff ID1 ID2 --root DIR
    cohortflow reindex --root DIR
    cohortflow migrate --from OLD --to NEW
    cohortflow stacking-data --root DIR --batch B --attempt N --target T [--export DIR [--output-name NAME]]

Errors the user can act on (bad data, missing artifacts) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cohortflow.errors import CohortflowError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEMO_SETTINGS = PROJECT_DIR / "config" / "demo.yaml"


def _default(name: str, fallback: str) -> str:
    return os.environ.get(name, fallback)


def new_home_yaml() -> str:
    """The ``dagster.yaml`` of a ``DAGSTER_HOME`` that cohortflow creates: no telemetry, and
    the instance class of ``resources/instance.py``."""
    from resources.instance import INSTANCE_CLASS_YAML

    return "telemetry:\n  enabled: false\n" + INSTANCE_CLASS_YAML


def ensure_dagster_home() -> Path:
    """``DAGSTER_HOME`` when set, else ``.dagster_home`` in the working folder (sqlite), so
    runs started here show in ``make ui``."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        from cohortflow.fsio import atomic_write_text

        atomic_write_text(config, new_home_yaml())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# --------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from cli.runner import run_universe, summary_text

    result = run_universe(
        data_dir=args.data, output_root=args.out, settings_path=args.settings or "", log=_say
    )
    print(summary_text(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.runner import run_universe, summary_text
    from cohortflow.sampledata import write_sample_universe

    data = Path(args.data)
    written = write_sample_universe(data)
    _say(f"built-in data: {len(written)} files from bokeh_sampledata.stocks in {data}")
    result = run_universe(
        data_dir=str(data), output_root=args.out, settings_path=str(args.settings), log=_say
    )
    print(summary_text(result))
    return 0


def _say(message: str) -> None:
    print(f"[cohortflow] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cohorts
def _index(root: str):
    from cohortflow.index import CohortIndex

    index = CohortIndex(root)
    if not index.exists():
        _say(f"no index under {root}: building it from the tree (cohortflow reindex)")
        index.rebuild()
    return index


def cmd_cohorts_list(args: argparse.Namespace) -> int:
    records = _index(args.root).list(
        target=args.target,
        stage=args.stage,
        view=args.view,
        batch=args.batch,
        attempt=args.attempt,
    )
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True))
        return 0
    print(
        f"{'cohort_id':<60} {'target':<12} {'stage':<18} {'view':<16} {'symbol':<8} {'batch':<13} att layout"
    )
    for r in records:
        print(
            f"{r.cohort_id:<60} {r.target:<12} {r.stage:<18} {r.view:<16} {r.symbol or '-':<8} "
            f"{r.batch or '-':<13} {r.attempt:>3} {r.layout}"
        )
    print(f"{len(records)} cohorts", file=sys.stderr)
    return 0


def _load_cohort(root: str, cohort_id: str) -> tuple[Any, dict[str, Any]]:
    from upath import UPath

    from cohortflow.layout import find_cohort

    record = find_cohort(root, cohort_id)
    folder = UPath(root) / record.path
    docs = {}
    for name in ("metadata.json", "metrics.json", "snapshot.json", "diff_prev.json", "drift.json"):
        path = folder / name
        if path.exists():
            docs[name] = json.loads(path.read_text())
    return record, docs


def cmd_cohorts_show(args: argparse.Namespace) -> int:
    record, docs = _load_cohort(args.root, args.cohort_id)
    print(json.dumps({"record": record.to_dict(), **docs}, indent=2, sort_keys=True))
    return 0


def cmd_cohorts_diff(args: argparse.Namespace) -> int:
    from cohortflow.canonical import sha256_hex
    from cohortflow.snapshots import Baseline, build_diff_prev

    rec_a, a = _load_cohort(args.root, args.a)
    _, b = _load_cohort(args.root, args.b)
    snap_a = a.get("snapshot.json", {})
    baseline = Baseline(
        rec_a.path,
        snap_a,
        a.get("metadata.json", {}),
        sha256_hex(json.dumps(snap_a, sort_keys=True).encode()),
    )
    snap_b = {
        **b.get("snapshot.json", {}),
        "settings_values": b.get("metadata.json", {}).get("settings", {}),
    }
    print(json.dumps(build_diff_prev(snap_b, baseline), indent=2, sort_keys=True))
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from cohortflow.index import CohortIndex

    count = CohortIndex(args.root).rebuild()
    print(f"indexed {count} cohorts under {args.root}")
    return 0


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


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cohortflow", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="register the universe in DIR and materialize every attempt")
    run.add_argument("--data", default=_default("COHORTFLOW_DATA_DIR", "data/bars"))
    run.add_argument("--out", default=_default("COHORTFLOW_OUTPUT_ROOT", "output"))
    run.add_argument("--settings", default=_default("COHORTFLOW_SETTINGS", ""))
    run.set_defaults(fn=cmd_run)

    demo = sub.add_parser("demo", help="copy the built-in real data and run the whole graph")
    demo.add_argument("--data", default=_default("COHORTFLOW_DATA_DIR", "data/bars"))
    demo.add_argument("--out", default=_default("COHORTFLOW_OUTPUT_ROOT", "output"))
    demo.add_argument("--settings", default=str(DEMO_SETTINGS))
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

    mig = sub.add_parser("migrate", help="copy an older-layout tree into the canonical layout")
    mig.add_argument("--from", dest="old", required=True)
    mig.add_argument("--to", dest="new", required=True)
    mig.set_defaults(fn=cmd_migrate)

    sd = sub.add_parser("stacking-data", help="the OOF dataset of a batch × attempt × target")
    sd.add_argument("--root", default=root_default)
    sd.add_argument("--batch", required=True)
    sd.add_argument("--attempt", type=int, required=True)
    sd.add_argument("--target", required=True)
    sd.add_argument("--export", help="copy it into a new folder under this one")
    sd.add_argument("--output-name", help="name of that folder (default: a new run id)")
    sd.set_defaults(fn=cmd_stacking_data)
    return p


def main(argv: list[str] | None = None) -> int:
    # the command reports what matters itself; library warnings stay in the Dagster run logs
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CohortflowError as exc:
        print(f"cohortflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
