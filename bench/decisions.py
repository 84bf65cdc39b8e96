"""Did a change to the core keep the research decisions? Exclusions and featuresets of
two runs of ``bench/stage_times.py`` side by side, attempt by attempt, target by target.

    python bench/decisions.py --case demo --base-ref 1f3c05c      # run both, compare
    python bench/decisions.py --case planted --base-ref 1f3c05c
    python bench/decisions.py before.json after.json              # compare two results

``--base-ref`` takes the core package (``cohortflow/``) of that commit from git into a
temporary folder and runs the same case with it (``stage_times.py --code``), then with
this checkout. Both runs use this checkout's bench scripts.

Printed: the exclusions (feature, reason, attempt) of each target and attempt, equal or
not; each featureset (the pooled view and every symbol view): kept features equal or not,
and for every feature kept by one run only, its permutation importance, t-stat over folds
and share in both runs against the cut it fell on, with a verdict: *within noise* when
the feature sits within two standard errors of the probe bar (se = importance / t-stat,
over the folds), or within 1 of the t-stat cut, or within a factor 2 of the share cut;
whether every importance frame is identical (17 digits); the target ranking scores and
the stack's held-out rank IC.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERM_MIN_T = 2.0  # selection.PERM_MIN_T
MIN_PERM_SHARE = 0.01  # selection.MIN_PERM_SHARE


def export_core(ref: str, folder: Path) -> Path:
    """``cohortflow/`` of commit ``ref`` under ``folder`` (git archive; no work tree)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "cohortflow"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_case(
    case: str, out: Path, work: Path, code: Path | None, seed: int | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "bench" / "stage_times.py"), "--case", case]
    cmd += ["--out", str(out), "--work", str(work), "--reference", "0"]
    if code is not None:
        cmd += ["--code", str(code)]
    if seed is not None:
        cmd += ["--set", f"seed={seed}"]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- comparison
def _se(p: dict[str, Any]) -> float:
    """Standard error of a permutation importance over the folds (importance / t-stat); 0
    for a feature no model used (importance and t-stat both 0)."""
    t, imp = p.get("t_stat"), p["importance"]
    if t is None:
        return float("inf")
    if t == 0:
        return 0.0 if imp == 0 else float("inf")
    return abs(imp / t)


def _t(p: dict[str, Any]) -> float:
    return float("nan") if p.get("t_stat") is None else float(p["t_stat"])


def noise_verdict(feature: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """Why ``feature`` (kept by one featureset, not the other) sits within noise of the cut,
    or that it does not."""
    reasons = []
    for fs in (a, b):
        p = fs["permutation"].get(feature)
        if p is None:
            return "not ranked in one run"
        bar = max(fs["probe_bar"], 0.0)
        if abs(p["importance"] - bar) <= 2 * _se(p):
            reasons.append(f"|imp - bar| {abs(p['importance'] - bar):.2g} <= 2 se {2 * _se(p):.2g}")
        elif p.get("t_stat") is not None and abs(p["t_stat"] - PERM_MIN_T) <= 1.0:
            reasons.append(f"t {p['t_stat']:.2f} within 1 of {PERM_MIN_T:g}")
        elif MIN_PERM_SHARE / 2 <= p["share"] <= 2 * MIN_PERM_SHARE:
            reasons.append(f"share {p['share']:.2%} within x2 of {MIN_PERM_SHARE:.0%}")
    if len(reasons) == 2:
        return "within noise (" + "; ".join(reasons) + ")"
    dropped = a["dropped"].get(feature) or b["dropped"].get(feature)
    if dropped == "correlated":
        return "near-duplicate swap (correlated rule)"
    return "NOT within noise"


def flips(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int]:
    """(features kept by one run only, summed over every attempt, target and view; views
    compared; views whose kept set differs)."""
    n = views = differ = 0
    for a_att, b_att in zip(before["attempts"], after["attempts"], strict=False):
        for target, a in a_att["decisions"].items():
            b = b_att["decisions"].get(target, {"featuresets": {}})
            for view, fa in a["featuresets"].items():
                fb = b["featuresets"].get(view, {"kept": []})
                only = set(fa["kept"]) ^ set(fb["kept"])
                n += len(only)
                views += 1
                differ += bool(only)
    return n, views, differ


def compare(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    lines: list[str] = []
    tally = dict(
        exclusions_equal=0,
        exclusions_differ=0,
        featuresets_equal=0,
        featuresets_noise=0,
        featuresets_differ=0,
        importances_identical=0,
        importances_changed=0,
        rankings_identical=0,
        rankings_changed=0,
    )
    if len(before["attempts"]) != len(after["attempts"]):
        lines.append(
            f"ATTEMPTS DIFFER: {len(before['attempts'])} before, {len(after['attempts'])} after"
        )
    for a_att, b_att in zip(before["attempts"], after["attempts"], strict=False):
        n = a_att["attempt"]
        for target in sorted(a_att["decisions"]):
            a, b = a_att["decisions"][target], b_att["decisions"].get(target)
            if b is None:
                lines.append(f"attempt {n} {target}: missing after")
                continue
            ex_a = {
                f: (e["reason"], e["attempt"], tuple(e["symbols"]))
                for f, e in a["exclusions"].items()
            }
            ex_b = {
                f: (e["reason"], e["attempt"], tuple(e["symbols"]))
                for f, e in b["exclusions"].items()
            }
            same = ex_a == ex_b
            tally["exclusions_equal" if same else "exclusions_differ"] += 1
            shown = ", ".join(f"{f} ({r}, attempt {at})" for f, (r, at, _) in sorted(ex_a.items()))
            lines.append(
                f"attempt {n} {target}: exclusions {'equal' if same else 'DIFFER'}: "
                f"{shown or 'none'}" + ("" if same else f" | after: {sorted(ex_b.items())}")
            )
            same_rank = a.get("ranking_sha256") == b.get("ranking_sha256") is not None
            tally["rankings_identical" if same_rank else "rankings_changed"] += 1
            lines.append(
                f"  ranking {'identical' if same_rank else 'changed'}: score {a['ranking_score']:.6f} -> {b['ranking_score']:.6f}; "
                f"stack test rank IC {a['stack_test_rank_ic']:.6f} -> {b['stack_test_rank_ic']:.6f}"
            )
            for view in sorted(a["featuresets"]):
                fa, fb = a["featuresets"][view], b["featuresets"].get(view)
                if fb is None:
                    lines.append(f"  {view}: missing after")
                    tally["featuresets_differ"] += 1
                    continue
                ident = fa.get("importances_sha256") == fb.get("importances_sha256") and (
                    "importances_sha256" in fa
                )
                tally["importances_identical" if ident else "importances_changed"] += 1
                tag = "importances identical" if ident else "importances changed"
                if fa["kept"] == fb["kept"]:
                    tally["featuresets_equal"] += 1
                    lines.append(
                        f"  {view}: featureset equal ({len(fa['kept'])} kept: {fa['kept']}); {tag}"
                    )
                    continue
                only = sorted(set(fa["kept"]) ^ set(fb["kept"]))
                verdicts = {f: noise_verdict(f, fa, fb) for f in only}
                bad = [f for f, v in verdicts.items() if v.startswith("NOT")]
                if set(fa["kept"]) == set(fb["kept"]):
                    verdicts = {"(order)": "same features, other order"}
                tally["featuresets_differ" if bad else "featuresets_noise"] += 1
                fallback = [
                    side for side, fs in (("before", fa), ("after", fb)) if fs.get("fallback")
                ]
                note = (
                    f"; fallback top-1 ({' and '.join(fallback)}: nothing passed the probe rule)"
                    if fallback
                    else ""
                )
                lines.append(
                    f"  {view}: featureset {'DIFFERS' if bad else 'differs within noise'}; {tag}{note}"
                    f"\n    before {fa['kept']}\n    after  {fb['kept']}"
                )
                for f, v in verdicts.items():
                    pa, pb = fa["permutation"].get(f, {}), fb["permutation"].get(f, {})
                    lines.append(
                        f"    {f}: {v}; before imp {pa.get('importance', float('nan')):.3g} "
                        f"t {_t(pa) if pa else float('nan'):.2f} (bar {fa['probe_bar']:.3g}, "
                        f"{fa['dropped'].get(f, 'kept')}), after imp "
                        f"{pb.get('importance', float('nan')):.3g} t {_t(pb) if pb else float('nan'):.2f} "
                        f"(bar {fb['probe_bar']:.3g}, {fb['dropped'].get(f, 'kept')})"
                    )
    return lines, tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", help="before.json after.json")
    parser.add_argument("--case", default=None, help="a stage_times.py case to run twice")
    parser.add_argument("--base-ref", default=None, help="git commit of the 'before' core")
    parser.add_argument("--work", default=None)
    parser.add_argument(
        "--seed-control", default=None, metavar="JSON_OR_SEED",
        help="the 'before' core at another seed (a result file, or a seed to run it with): "
        "how many kept features the seed alone flips, the yardstick for the change's flips",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.case:
        if not args.base_ref:
            parser.error("--case needs --base-ref")
        work = Path(args.work or tempfile.mkdtemp(prefix="cohortflow-decisions-"))
        code = export_core(args.base_ref, work / f"core_{args.base_ref}")
        before = run_case(args.case, work / "before.json", work, code)
        after = run_case(args.case, work / "after.json", work, None)
    elif len(args.results) == 2:
        before, after = (json.loads(Path(p).read_text()) for p in args.results)
    else:
        parser.error("give two result files, or --case and --base-ref")
    control = None
    if args.seed_control is not None:
        if Path(args.seed_control).is_file():
            control = json.loads(Path(args.seed_control).read_text())
        elif args.case:
            control = run_case(
                args.case, work / "control.json", work, code, seed=int(args.seed_control)
            )
        else:
            parser.error("--seed-control SEED runs the base core: it needs --case")
    lines, tally = compare(before, after)
    n, views, differ = flips(before, after)
    lines.append(f"kept-set flips, after vs before: {n} features in {differ} of {views} views")
    if control is not None:
        cn, cviews, cdiffer = flips(before, control)
        lines.append(
            f"kept-set flips, before at seed {control.get('seed', '?')} vs before (the seed "
            f"alone; the yardstick): {cn} features in {cdiffer} of {cviews} views"
        )
    header = [
        f"decisions: case {before.get('case')} ({before.get('description')})",
        f"before: {before.get('code')}, {sum(before['wall'].values()):.1f} s; "
        f"after: {after.get('code')}, {sum(after['wall'].values()):.1f} s",
    ]
    print("\n".join(header + lines))
    print(" ".join(f"{k}={v}" for k, v in tally.items()))
    return 0 if tally["exclusions_differ"] == tally["featuresets_differ"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
