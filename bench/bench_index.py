"""Benchmark: finding and listing cohorts through the index versus walking the tree.

Builds a synthetic output root of N cohorts (folders, a small metadata.json each, and a
_COMPLETE marker per attempt) spread over targets, stages, both views, batches and
attempts; builds the index with ``CohortIndex.rebuild``; then times

* lookup: ``find_cohort(root, id)`` (through the index) vs. the walk it replaces
  (``walk_cohorts`` over the whole tree, keeping the matches);
* list: ``CohortIndex.list(target=T)`` (one target's history) vs. ``walk_cohorts(root,
  target=T)``.

Times are medians of several repeats, in milliseconds, with a warm page cache (the tree
was just written). The tree is built in /dev/shm when available (see --dir). The last line
holds ``key=value`` pairs for scripts.

    python bench/bench_index.py              # N = 100,000 (about 1-2 min in all)
    python bench/bench_index.py --quick      # N = 5,000, fewer repeats
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cohortflow.index import CohortIndex, find_cohort  # noqa: E402
from cohortflow.layout import STAGES, VIEWS, walk_cohorts  # noqa: E402

TARGETS = tuple(f"fwd_ret_{h}" for h in (1, 2, 3, 5, 10, 15, 20, 30, 60, 120))
SYMBOLS = ("AAPL", "AMZN", "GOOG", "META", "MSFT", "NVDA", "TSLA", "JPM")
N_BATCHES = 50
N_ATTEMPTS = 3


def _slots() -> list[tuple[str, str, str, str | None, str, int]]:
    """Every attempt folder of the synthetic tree: (target, stage, view, symbol, sig, attempt).

    Targets vary fastest, then views/symbols, stages, batches and attempts, so that even a
    small N touches every target, stage and view.
    """
    sigs = [hashlib.sha256(f"universe-{b}".encode()).hexdigest() for b in range(N_BATCHES)]
    places = [(VIEWS[0], None)] + [(VIEWS[1], s) for s in SYMBOLS]
    return [
        (target, stage, view, symbol, sig, attempt)
        for attempt in range(N_ATTEMPTS)
        for sig in sigs
        for stage in STAGES
        for view, symbol in places
        for target in TARGETS
    ]


def build_tree(root: Path, n: int) -> list[str]:
    """Write ``n`` cohorts under ``root``; returns their ids in creation order.

    Cohorts are dealt round-robin over the attempt folders so every target, stage, view,
    batch and attempt gets its share. The tree is throwaway benchmark input, so files are
    written with plain ``open`` (no fsync): atomic fsio writes would time the disk, not
    the index.
    """
    slots = _slots()
    ids = []
    attempt_dirs: set[str] = set()
    for i in range(n):
        target, stage, view, symbol, sig, attempt = slots[i % len(slots)]
        prefix = "cs" if symbol is None else "sy"
        hash8 = hashlib.sha256(str(i).encode()).hexdigest()[:8]
        cid = f"{prefix}_2025Q{1 + i % 4}_{sig[:12]}_min_cs3_max2000_v1_{hash8}"
        sym = "" if symbol is None else f"symbol={symbol}/"
        attempt_dir = (
            f"{root}/targets/{target}/reproducibility/stage={stage}/{view}/{sym}"
            f"batch_{sig[:12]}/attempt_{attempt}"
        )
        os.makedirs(f"{attempt_dir}/cohort={cid}")
        with open(f"{attempt_dir}/cohort={cid}/metadata.json", "w") as fh:
            json.dump({"cohort_id": cid, "target": target, "universe_sig": sig}, fh)
        if attempt_dir not in attempt_dirs:
            attempt_dirs.add(attempt_dir)
            open(f"{attempt_dir}/_COMPLETE", "w").close()
        ids.append(cid)
    return ids


def _default_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="cohorts in the tree")
    parser.add_argument("--quick", action="store_true", help="N = 5,000 and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of index timings")
    parser.add_argument("--walk-repeats", type=int, default=None, help="repeats of walk timings")
    parser.add_argument(
        "--dir",
        default=_default_dir(),
        help="where to build the tree (default: /dev/shm when there, else the temp folder; "
        "removing 100,000 folders from a busy disk can take minutes)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    args = parser.parse_args(argv)
    n = 5_000 if args.quick and args.n == 100_000 else args.n
    repeats = args.repeats or (5 if args.quick else 21)
    walk_repeats = args.walk_repeats or (1 if args.quick else 3)

    workdir = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.dir))
    root = workdir / "out"
    try:
        t0 = time.perf_counter()
        ids = build_tree(root, n)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        indexed = CohortIndex(root).rebuild()
        rebuild_s = time.perf_counter() - t0
        if indexed != n:
            raise SystemExit(f"index holds {indexed} cohorts, expected {n}")

        # a fixed sample of ids (this is benchmark input, not a run id)
        sample = random.Random(0).sample(ids, min(repeats, len(ids)))
        target = TARGETS[2]
        lookups = iter(sample * 2)

        lookup_ms, record = median_ms(lambda: find_cohort(root, next(lookups)), len(sample))
        list_ms, listed = median_ms(lambda: CohortIndex(root).list(target=target), repeats)
        cid = sample[0]
        walk_lookup_ms, found = median_ms(
            lambda: [r for r in walk_cohorts(root) if r.cohort_id == cid], walk_repeats
        )
        walk_list_ms, walked = median_ms(
            lambda: list(walk_cohorts(root, target=target)), walk_repeats
        )
        if listed != walked or found != [find_cohort(root, cid)]:
            raise SystemExit("index and walk disagree")

        rows = [
            ("find one cohort by id", lookup_ms, walk_lookup_ms, 20.0),
            (f"list {target} ({len(listed)} cohorts)", list_ms, walk_list_ms, 200.0),
        ]
        print(f"N = {n} cohorts, {len(_slots())} attempt-folder slots, tree at {root}")
        print(f"tree build {build_s:.1f} s, index rebuild (walk + insert) {rebuild_s:.1f} s")
        print(f"{'operation':<34}{'index ms':>12}{'walk ms':>12}{'speed-up':>10}{'goal ms':>9}")
        for name, idx, walk, goal in rows:
            ok = "ok" if idx < goal else "MISSED"
            print(f"{name:<34}{idx:>12.2f}{walk:>12.1f}{walk / idx:>9.0f}x{goal:>7.0f} {ok}")
        print(
            f"lookup_ms={lookup_ms:.2f} list_ms={list_ms:.2f} walk_lookup_ms={walk_lookup_ms:.1f} "
            f"walk_list_ms={walk_list_ms:.1f} n={n} build_s={build_s:.1f} rebuild_s={rebuild_s:.1f}"
        )
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
