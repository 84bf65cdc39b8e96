"""Wall and CPU seconds, row-rounds and fit_efficiency of every stage of the research
graph's computations (the core calls of the assets, no Dagster, no store), attempt after
attempt as ``cohortflow run`` would go, and the decisions each attempt made.

    python bench/stage_times.py --case graph        # make bench's graph case (run.FULL_CASE)
    python bench/stage_times.py --case quick        # run.QUICK_CASE
    python bench/stage_times.py --case demo         # the built-in data, config/demo.yaml
    python bench/stage_times.py --case planted      # synthetic with planted leaks and signals
    python bench/stage_times.py --case scale:500    # 500 symbols x 2,500 bars x 60 features
    ... --out result.json          # stage times, row-rounds and decisions, for decisions.py
    ... --code DIR                 # import cohortflow from DIR (e.g. an older checkout)
    ... --reference 0              # skip the reference fit (fit_efficiency not computed)

An attempt makes the same core calls as :func:`run.bare_graph` (which ``make bench``
times), with the exclusions of the earlier attempts inherited as the assets inherit them;
the data stage (bars, features: batch-level in the graph) runs once, in attempt 0.
Attempt n+1 runs when attempt n found leaks and ``attempt_limit`` allows
(:func:`cohortflow.intake.decide_next_attempt`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _code_path(argv: list[str]) -> None:
    """``--code DIR`` must take effect before anything imports cohortflow."""
    if "--code" in argv:
        sys.path.insert(0, str(Path(argv[argv.index("--code") + 1]).resolve()))
        # bound now: the bench modules put this checkout first on the path later
        importlib.import_module("cohortflow")


if __name__ == "__main__":
    _code_path(sys.argv)
sys.path.insert(1, str(REPO))
sys.path.insert(2, str(REPO / "bench"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402

STAGES = ("data", "leakage", "target_ranking", "feature_selection", "training")
PLANTED = dict(n_symbols=8, n_bars=900, n_noise=10, seed=1)


# --------------------------------------------------------------------------- cases
def prepare_case(case: str, work: Path) -> tuple[Path, Path, str]:
    """(data folder, settings YAML, description) of a named case, written under ``work``."""
    import run

    from cohortflow.synthetic import generate

    work.mkdir(parents=True, exist_ok=True)
    if case in ("graph", "quick"):
        spec = run.FULL_CASE if case == "graph" else run.QUICK_CASE
        data, settings_path, _ = run.write_case(spec, work)
        return data, settings_path, spec.describe()
    if case == "demo":
        from cohortflow.sampledata import write_sample_universe

        data = work / "data"
        write_sample_universe(data)
        return data, REPO / "config" / "demo.yaml", "built-in sample data, config/demo.yaml"
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text()) or {}
    if case == "planted":
        data = work / "data"
        generate(data, with_leaks=True, **PLANTED)
        # the data tests, not the "future" name rule, must catch leak_future (as in
        # tests/test_pipeline_synthetic.py)
        raw.update(horizons=[5, 10], name_rules=["fwd_", "target", "label"], attempt_limit=3)
        desc = f"synthetic with planted leaks {PLANTED}, default settings, horizons 5 and 10"
    elif case.startswith("scale:"):
        n = int(case.split(":", 1)[1])
        data = work / f"u{n}"
        if not (data / ".complete").exists():
            generate(data, n_symbols=n, n_bars=2500, n_noise=58, with_leaks=False)
            (data / ".complete").write_text("")
        raw["attempt_limit"] = 1
        desc = f"synthetic {n} symbols x 2500 bars x 60 user features, default settings"
    else:
        raise SystemExit(f"unknown case {case!r}")
    settings_path = work / "settings.yaml"
    settings_path.write_text(yaml.safe_dump(raw))
    return data, settings_path, desc


# --------------------------------------------------------------------------- one attempt
def featureset_record(fs: Any, importances: dict[str, Any]) -> dict[str, Any]:
    """What a featureset decided, with the permutation numbers that decided it."""
    import hashlib

    perm = importances["permutation"].set_index("feature")
    return {
        # every number of every importance frame, to 17 digits: equal hashes, equal frames
        "importances_sha256": {
            model: hashlib.sha256(
                frame.to_csv(index=False, float_format="%.17g").encode()
            ).hexdigest()
            for model, frame in sorted(importances.items())
        },
        "kept": list(fs.kept),
        "dropped": {f: str(r).split(":", 1)[0] for f, r in fs.dropped.items()},
        "probe_bar": float(fs.rule.get("probe_permutation_bar", 0.0)),
        "fallback": bool(fs.rule.get("fallback_top1", False)),
        "permutation": {
            f: {
                "importance": float(perm.at[f, "importance"]),
                "t_stat": float(perm.at[f, "t_stat"]) if "t_stat" in perm else None,
                "share": float(perm.at[f, "share"]),
            }
            for f in perm.index
        },
    }


def ranking_hash(ranking: Any) -> str:
    """sha256 of every metric and importance of a target ranking (floats to 17 digits)."""
    import hashlib

    views = [ranking.cross_sectional, *ranking.symbol_specific]
    doc = [
        [v.view, v.symbol, v.metrics, v.importances["lightgbm"].to_dict(orient="list")]
        for v in views
    ]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def run_attempts(
    data_dir: Path, settings: Any, memo: bool = False, batch_views: bool = True
) -> dict[str, Any]:
    """Every attempt of the graph's computations; seconds, CPU seconds and row-rounds per
    stage (summed over attempts and per attempt) and the decisions. ``memo``: importances
    go through one :class:`cohortflow.memo.MemoryCache` for the whole run, so an attempt
    reads what an earlier one computed on the same inputs. ``batch_views``: the importances
    of all views of a target in one batch of fits (``compute_importances_many``, where the
    core has it; not with ``memo``), else view after view as the assets do today."""
    import dataclasses

    # imported before the clock starts: a first import is not a stage's work (and with
    # PYTHONDONTWRITEBYTECODE set, each process compiles them again: seconds)
    import lightgbm  # noqa: F401
    import pandas as pd
    import sklearn.linear_model  # noqa: F401
    import xgboost  # noqa: F401

    from cohortflow import fitlog
    from cohortflow.bars import load_universe
    from cohortflow.features import build_panel, feature_specs
    from cohortflow.intake import decide_next_attempt
    from cohortflow.layout import Scope
    from cohortflow.leakage import detect_leaks
    from cohortflow.oof import generate_oof
    from cohortflow.ranking import rank_target, symbols_for_view
    from cohortflow.selection import compute_importances, prune
    from cohortflow.snapshots import draft_from_rows
    from cohortflow.stacking import fit_stacking, split_train_test

    if memo:
        from cohortflow.memo import MemoryCache
        from cohortflow.selection import cached_importances

        cache = MemoryCache()

        def importances_of(*args: Any) -> Any:
            return cached_importances(cache, *args)
    else:
        importances_of = compute_importances
    import cohortflow.selection as selection

    batch = (
        getattr(selection, "compute_importances_many", None) if batch_views and not memo else None
    )

    zero = {s: 0.0 for s in STAGES}
    wall, cpu = dict(zero), dict(zero)
    counts = {s: fitlog.FitCounts() for s in STAGES}
    state = {"t": time.perf_counter(), "c": time.process_time(), "f": fitlog.snapshot()}

    def lap(stage: str) -> None:
        t, c, f = time.perf_counter(), time.process_time(), fitlog.snapshot()
        wall[stage] += t - state["t"]
        cpu[stage] += c - state["c"]
        counts[stage] = counts[stage] + (f - state["f"])
        state.update(t=time.perf_counter(), c=time.process_time(), f=fitlog.snapshot())

    universe = load_universe(data_dir, settings)
    panel = build_panel(universe, settings)
    frame = panel.frame
    hashes = {f.symbol: f.sha256 for f in universe.files}
    fp = settings.fingerprint_fields()
    lap("data")
    common = set.intersection(*(set(b.columns) for b in universe.bars.values()))
    specs = [s for s in feature_specs(common, settings) if s.name in panel.computed]

    def rows_of(rows: pd.DataFrame, target: str, symbol: str | None) -> pd.DataFrame:
        keep = rows[target].notna().to_numpy()
        if symbol is not None:
            keep = keep & (rows["symbol"] == symbol).to_numpy()
        return rows[keep]

    def draft(scope: Scope, rows: pd.DataFrame, features: Any, metrics: Any) -> Any:
        return draft_from_rows(
            scope, rows, universe_sig=universe.universe_sig, file_hashes=hashes,
            features=list(features), excluded={}, metrics=metrics, key_metrics={}, settings=fp,
        )  # fmt: skip

    attempts: list[dict[str, Any]] = []
    inherited: dict[str, Any] = {}
    attempt: int | None = 0
    while attempt is not None:
        before = (dict(wall), dict(cpu))
        decisions: dict[str, Any] = {}
        found: dict[str, Any] = {}
        for horizon in settings.horizons:
            target = f"fwd_ret_{horizon}"
            train, test, info = split_train_test(frame, target, horizon, settings)
            train_panel = dataclasses.replace(panel, frame=train)
            excl = detect_leaks(
                train_panel, target, horizon, specs, universe.bars, settings, attempt,
                inherited.get(target),
            )  # fmt: skip
            found[target] = excl
            dropped = {e.feature for e in excl.entries if e.attempt < attempt}
            features = [f for f in panel.features if f not in dropped]
            lap("leakage")

            symbols = symbols_for_view(frame, target, settings.symbol_views)
            ranking = rank_target(frame, target, horizon, features, settings, symbols=symbols)
            for view in (ranking.cross_sectional, *ranking.symbol_specific):
                scope = Scope(
                    target, "TARGET_RANKING", view.view, universe.batch, attempt, view.symbol
                )
                draft(scope, rows_of(frame, target, view.symbol), features, view.metrics)
            lap("target_ranking")

            featuresets: dict[str, Any] = {}
            fs_records: dict[str, Any] = {}
            views = [None, *symbols]
            frames = [rows_of(train, target, symbol) for symbol in views]
            if batch:  # every view's folds in one batch of fits
                all_importances = batch(frames, target, horizon, features, settings)
            else:
                all_importances = [
                    importances_of(rows, target, horizon, features, settings) for rows in frames
                ]
            for symbol, rows, importances in zip(views, frames, all_importances, strict=True):
                view = "SYMBOL_SPECIFIC" if symbol else "CROSS_SECTIONAL"
                scope = Scope(target, "FEATURE_SELECTION", view, universe.batch, attempt, symbol)
                fs = prune(
                    importances, rows, list(panel.features), target, view, symbol, settings,
                    excluded=sorted(dropped),
                )  # fmt: skip
                draft(scope, rows_of(frame, target, symbol), fs.kept, {"kept": list(fs.kept)})
                featuresets[symbol] = fs
                fs_records[symbol or "CROSS_SECTIONAL"] = featureset_record(fs, importances)
            lap("feature_selection")

            kept = list(featuresets[None].kept)
            oof = generate_oof(train, target, horizon, kept, settings)
            stack = fit_stacking(oof, train, test, target, horizon, kept, settings, split_info=info)
            scope = Scope(target, "TRAINING", "CROSS_SECTIONAL", universe.batch, attempt)
            draft(scope, train[train[target].notna()], kept, {"test": stack.test_metrics})
            lap("training")
            decisions[target] = {
                "exclusions": {
                    e.feature: {
                        "reason": e.reason,
                        "attempt": e.attempt,
                        "symbols": list(e.symbols),
                    }
                    for e in excl.entries
                },
                "ranking_score": float(ranking.score),
                "ranking_sha256": ranking_hash(ranking),
                "featuresets": fs_records,
                "stack_test_rank_ic": float(stack.test_metrics["stack"]["rank_ic"]),
            }
        attempts.append(
            {
                "attempt": attempt,
                "wall": {s: wall[s] - before[0][s] for s in STAGES},
                "cpu": {s: cpu[s] - before[1][s] for s in STAGES},
                "decisions": decisions,
            }
        )
        inherited = found
        attempt = decide_next_attempt(found, attempt, settings.attempt_limit)
    return {
        "wall": wall,
        "cpu": cpu,
        "counts": {s: counts[s].to_dict() for s in STAGES},
        "attempts": attempts,
        "rows": int(len(frame)),
    }


# --------------------------------------------------------------------------- report
def report_lines(result: dict[str, Any], reference: Any) -> list[str]:
    from fit_efficiency import efficiency

    wall, cpu, counts = result["wall"], result["cpu"], result["counts"]
    total_wall = sum(wall.values())
    total_rr = sum(c["row_rounds"] for c in counts.values())
    head = f"{'stage':<19}{'wall s':>9}{'CPU s':>9}{'M row-rounds':>14}{'fit_eff':>9}{'fits':>7}"
    out = [head, "-" * len(head)]
    for s in [*STAGES, "all"]:
        w = total_wall if s == "all" else wall[s]
        c = sum(cpu.values()) if s == "all" else cpu[s]
        rr = total_rr if s == "all" else counts[s]["row_rounds"]
        fits = sum(
            counts[x]["lightgbm"] + counts[x]["xgboost"] for x in (STAGES if s == "all" else [s])
        )
        eff = efficiency(rr, w, reference) if reference else float("nan")
        eff_fits = efficiency(fits, w, reference) if reference else float("nan")
        out.append(f"{s:<19}{w:>9.1f}{c:>9.1f}{rr / 1e6:>14.1f}{eff:>9.3f}{eff_fits:>7.3f}")
    for a in result["attempts"]:
        out.append(
            f"attempt {a['attempt']}: {sum(a['wall'].values()):.1f} s wall ("
            + ", ".join(f"{s} {a['wall'][s]:.1f}" for s in STAGES)
            + ")"
        )
    out.append(
        "fit_eff: row-rounds (fits + permutation row-trees) / wall / the reference fit's rate; "
        "fits: the same with the fits' row-rounds only"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="graph")
    parser.add_argument("--out", default=None, help="write the whole result as JSON here")
    parser.add_argument("--code", default=None, help="import cohortflow from this folder")
    parser.add_argument("--work", default=None, help="data folder root (default: temporary)")
    parser.add_argument(
        "--memo", action="store_true", help="importances through one cache for all attempts"
    )
    parser.add_argument(
        "--no-batch", action="store_true", help="importances view after view (no batch)"
    )
    parser.add_argument(
        "--experiment", action="append", default=[], metavar="NAME=VALUE",
        help="an experiment of bench/experiments.py, e.g. importance_early_stopping=10",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting (YAML value), e.g. --set fold_workers=1",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default="500000,60,200", help="rows,features,rounds of the reference "
        "fit, or 0 to skip it",
    )  # fmt: skip
    args = parser.parse_args(argv)

    from fit_efficiency import reference_fit

    import cohortflow
    from cohortflow.settings import load_settings

    work = Path(args.work or tempfile.mkdtemp(prefix="cohortflow-stages-"))
    data, settings_path, desc = prepare_case(args.case, work / args.case.replace(":", "_"))
    settings = load_settings(settings_path)
    for item in args.experiment:
        import experiments

        experiments.apply(item)
    if args.set:
        changes = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        settings = settings.replace(**changes)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = run_attempts(data, settings, memo=args.memo, batch_views=not args.no_batch)
    seconds = time.perf_counter() - t0
    reference = None
    if args.reference != "0":
        rows, feats, rounds = (int(x) for x in args.reference.split(","))
        reference = reference_fit(rows, feats, rounds, settings)
    load_after = os.getloadavg()[0]
    result.update(
        case=args.case,
        description=desc
        + "".join(f"; {kv}" for kv in args.set)
        + ("; memo" if args.memo else "")
        + ("; views one by one" if args.no_batch else ""),
        code=str(Path(cohortflow.__file__).parent),
        seconds=seconds,
        load_1m=[load_before, load_after],
        reference=None
        if reference is None
        else {"rate": reference.rate, "seconds": reference.seconds, "text": reference.describe()},
    )
    lines = [
        f"case {args.case}: {desc}; {result['rows']:,} panel rows",
        f"code: {result['code']}; load_1m before {load_before:.2f}, after {load_after:.2f}",
        *([reference.describe()] if reference else []),
        *report_lines(result, reference),
        f"case={args.case} seconds={seconds:.1f} "
        + " ".join(f"{s}={result['wall'][s]:.1f}" for s in STAGES)
        + (
            f" fit_efficiency={result['counts'] and _eff(result, reference):.3f}"
            if reference
            else ""
        ),
    ]
    print("\n".join(lines), flush=True)
    if args.out:
        from cohortflow.fsio import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=1, sort_keys=True))
    return 0


def _eff(result: dict[str, Any], reference: Any) -> float:
    from fit_efficiency import efficiency

    total = sum(c["row_rounds"] for c in result["counts"].values())
    return efficiency(total, sum(result["wall"].values()), reference)


if __name__ == "__main__":
    raise SystemExit(main())
