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

An attempt makes the same :mod:`cohortflow.stages` calls as :func:`run.bare_graph` (which
``make bench`` times), with attempt n-1's exclusions inherited as the target_ranking step
inherits them; the data stage (bars, features: batch-level in the graph) runs once, in
attempt 0. Attempt n+1 runs when attempt n found leaks and ``attempt_limit`` allows
(:func:`cohortflow.leakage.next_attempt`).
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

#: run.STAGES: exclusions are found in the target_ranking step
STAGES = ("data", "target_ranking", "feature_selection", "training")
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


def ranking_hash(snapshots: Any) -> str:
    """sha256 of every metric and importance of a target ranking, both views (the cohort
    drafts' metrics, floats to 17 digits, and the importance files the folders hold)."""
    import hashlib

    doc = []
    for d in snapshots.drafts:
        extras = snapshots.extras.get(d.scope, {})
        imps = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(extras.items())}
        doc.append([str(d.scope.view), d.scope.symbol, d.metrics, imps])
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def _importances_variant(memo: bool, batch_views: bool) -> Any:
    """``stages.importances``, or a bench variant of it with the same signature: ``memo``:
    each view's importances through one :class:`cohortflow.memo.MemoryCache` for the whole
    run (an attempt reads what an earlier one computed on the same inputs); not
    ``batch_views``: view after view (``compute_importances``), as before the views were
    batched."""
    from cohortflow import stages

    if not memo and batch_views:
        return stages.importances
    from cohortflow.domain import Stage
    from cohortflow.selection import compute_importances

    cache = None
    if memo:
        from cohortflow.memo import MemoryCache
        from cohortflow.selection import cached_importances

        cache = MemoryCache()

    def importances(t: Any, exclusions: Any) -> dict[Any, Any]:
        features = t.usable(stages.cross_sectional(exclusions))
        out = {}
        for symbol in [None, *t.view_symbols]:
            rows = stages.rows_with_target(t.holdout.train, t.target, symbol)
            args = (rows, t.target, t.horizon, features, t.settings)
            imps = cached_importances(cache, *args) if memo else compute_importances(*args)
            out[t.scope(Stage.FEATURE_SELECTION, symbol)] = imps
        return out

    return importances


def run_attempts(
    data_dir: Path, settings: Any, memo: bool = False, batch_views: bool = True
) -> dict[str, Any]:
    """Every attempt of the graph's computations, through :mod:`cohortflow.stages` as
    :func:`run.bare_graph` calls it; seconds, CPU seconds and row-rounds per stage (summed
    over attempts and per attempt) and the decisions. Attempt n finds its exclusions with
    attempt n-1's cross-sectional exclusions inherited (as the target_ranking step reads
    them); attempt n+1 runs while some target's :func:`cohortflow.leakage.next_attempt`
    asks for it. ``memo`` / ``batch_views``: see :func:`_importances_variant`."""
    # imported before the clock starts: a first import is not a stage's work (and with
    # PYTHONDONTWRITEBYTECODE set, each process compiles them again: seconds)
    import lightgbm  # noqa: F401
    import run
    import sklearn.linear_model  # noqa: F401
    import xgboost  # noqa: F401

    # cohortflow.fitlog's, or zero counters with an older core (--code) that has none
    from fit_efficiency import FitCounts as zero_counts
    from fit_efficiency import snapshot

    from cohortflow import stages
    from cohortflow.bars import load_universe
    from cohortflow.features import build_panel
    from cohortflow.leakage import next_attempt

    importances_of = _importances_variant(memo, batch_views)
    zero = {s: 0.0 for s in STAGES}
    wall, cpu = dict(zero), dict(zero)
    counts = {s: zero_counts() for s in STAGES}
    state = {"t": time.perf_counter(), "c": time.process_time(), "f": snapshot()}

    def lap(stage: str) -> None:
        t, c, f = time.perf_counter(), time.process_time(), snapshot()
        wall[stage] += t - state["t"]
        cpu[stage] += c - state["c"]
        counts[stage] = counts[stage] + (f - state["f"])
        state.update(t=time.perf_counter(), c=time.process_time(), f=snapshot())

    universe = load_universe(data_dir, settings)
    panel = build_panel(universe, settings)
    lap("data")

    attempts: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}  # target -> attempt n-1's cross-sectional exclusions
    attempt: int | None = 0
    while attempt is not None:
        before = (dict(wall), dict(cpu))
        decisions: dict[str, Any] = {}
        found: dict[str, Any] = {}
        for horizon, target in zip(settings.horizons, settings.targets, strict=True):
            t = stages.TargetAttempt(
                target, horizon, universe.batch, attempt, settings, panel, universe
            )
            excl, ranked = run.exclusions_and_ranking(t, previous.get(target))
            lap("target_ranking")
            imps = importances_of(t, excl)
            fsets = stages.featuresets(t, imps, excl)
            stages.selection_snapshots(t, imps, fsets, excl)
            lap("feature_selection")
            oof = stages.oof_dataset(t, fsets)
            stack = stages.stacking_model(t, fsets, oof)
            folio = stages.portfolio(t, stack.test_predictions)
            scores = {k: v for k, v in stack.test_metrics.items() if isinstance(v, dict)}
            stages.training_snapshots(t, fsets, oof, {"metrics_from_loaded_model": scores}, folio)
            lap("training")
            cs = stages.cross_sectional(excl)
            found[target] = cs
            ranking_cs = next(d for d in ranked.drafts if d.scope.symbol is None)
            decisions[target] = {
                "exclusions": {
                    e.feature: {
                        "reason": e.reason,
                        "attempt": e.attempt,
                        "symbols": list(e.symbols),
                    }
                    for e in cs.entries
                },
                "ranking_score": float(ranking_cs.key_metrics.get("score", float("nan"))),
                "ranking_sha256": ranking_hash(ranked),
                "featuresets": {
                    scope.symbol or "CROSS_SECTIONAL": featureset_record(fs, imps[scope])
                    for scope, fs in fsets.items()
                },
                "stack_test_rank_ic": float(scores.get("stack", {}).get("rank_ic", float("nan"))),
            }
        attempts.append(
            {
                "attempt": attempt,
                "wall": {s: wall[s] - before[0][s] for s in STAGES},
                "cpu": {s: cpu[s] - before[1][s] for s in STAGES},
                "decisions": decisions,
            }
        )
        previous = found
        wanted = [next_attempt(e, settings.attempt_limit) for e in found.values()]
        attempt = min((n for n in wanted if n is not None), default=None)
    return {
        "wall": wall,
        "cpu": cpu,
        "counts": {s: counts[s].to_dict() for s in STAGES},
        "attempts": attempts,
        "rows": int(len(panel.frame)),
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
        seed=settings.seed,
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
