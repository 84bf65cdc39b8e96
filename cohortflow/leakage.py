"""Leak detection: name rules, look-ahead, dominance and lead-profile tests -> :class:`Exclusions`.

Four tests, run in this order on the features that earlier attempts did not exclude:

1. **Name rules** (``settings.name_rules``, case-insensitive substrings such as ``fwd_``,
   ``future``; plus any target or ``label_end_`` column name): cheap and certain.
2. **Look-ahead test** (computed features only, the code we can rerun): each feature is
   recomputed on the bars truncated at cut points ``t``; any change (NaN-aware, beyond a
   1e-12 relative tolerance) at a row <= ``t`` means the value at ``t`` read bars after ``t``.
3. **Dominance test** (every feature, including user columns whose code we cannot rerun):
   the out-of-fold rank IC of the feature alone, under :class:`~cohortflow.splits.PurgedKFold`.
   Honest daily signals rarely reach 0.1; a leak scores far higher or far above the rest.
4. **Lead profile** (user columns the dominance test let through): the rank IC against each
   single future bar 1..h (and its |return|), pooled per date and per symbol. An honest
   signal's power spreads thinly over the bars ahead; a peek concentrates on the bars it
   copied, starting with the next one, and is implausibly strong there
   (:func:`lead_profile_hits`). It catches what scores modestly against ``fwd_ret_h``: a
   5-bar return shifted one bar back, a centered window narrower than h, a leak in one
   symbol's file, a peek at future volatility.

Scope of an exclusion (``Exclusion.symbols``): empty means *every symbol*. Look-ahead hits are
always pooled: the feature code is the same for every symbol, so a feature that reads the
future on one sampled symbol reads it on all of them (the symbols where the change was
observed are kept in the evidence). Only the per-symbol dominance and lead-profile tests of
user columns, which come from per-symbol files and may leak in one file only, yield
symbol-scoped entries.

Attempts fix themselves: attempt ``n+1`` inherits attempt ``n``'s exclusions, tests only
what is left, and :func:`next_attempt` asks for another attempt only while leaks remain.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cohortflow.canonical import normalize
from cohortflow.metrics import forward_bar_returns
from cohortflow.settings import Settings
from cohortflow.splits import PurgedKFold

if TYPE_CHECKING:
    from cohortflow.features import FeatureSpec, Panel

log = logging.getLogger(__name__)

REASONS = ("name_rule", "lookahead", "lead_profile", "dominance")

# Look-ahead: relative tolerance of "changed" (plus a tiny absolute one for values near 0).
LOOKAHEAD_RTOL = 1e-12
LOOKAHEAD_ATOL = 1e-15
# Look-ahead: at most this many symbols are recomputed (evenly spaced in sorted order, so the
# choice is deterministic and spread over the universe); the code is shared, so a handful of
# symbols with several cuts each is enough to see a feature read the future.
LOOKAHEAD_MAX_SYMBOLS = 16

# Dominance: the ratio rule only fires above this absolute rank IC. With mostly-noise features
# the median is ~0.01, so the floor is what the ratio rule really compares with: 0.2 sits above
# strong honest signals (the synthetic truth plants pooled ICs of 0.15 and 0.12) and well
# below what a leak scores (fwd return + noise: 0.7+; a centered window: ~0.7).
DOMINANCE_FLOOR = 0.2
# Dominance per symbol (user columns): a symbol's OOF rank IC over n rows of an h-bar target has
# a standard error of about sqrt(h / n) (overlapping labels); flag only beyond this many of them.
PER_SYMBOL_Z = 5.0

_TARGET_RE = re.compile(r"^fwd_ret_(\d+)$")


# --------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class Exclusion:
    """One excluded feature, why, the numbers that show it, and the attempt that found it.

    ``symbols`` is the scope: empty = every symbol (pooled); otherwise only those symbols.
    ``evidence`` is normalised at construction (plain JSON types, 12-digit floats), so an
    exclusion survives a ``to_dict``/``from_dict`` round trip unchanged.
    """

    feature: str
    reason: str
    evidence: Mapping[str, Any]
    attempt: int
    symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown exclusion reason {self.reason!r}; known: {REASONS}")
        if int(self.attempt) < 0:
            raise ValueError(f"attempt must be >= 0, got {self.attempt}")
        object.__setattr__(self, "attempt", int(self.attempt))
        object.__setattr__(self, "evidence", normalize(dict(self.evidence)))
        object.__setattr__(self, "symbols", tuple(sorted({str(s) for s in self.symbols})))

    def __hash__(self) -> int:  # evidence is a dict: hash the identity fields only
        return hash((self.feature, self.reason, self.attempt, self.symbols))

    def applies_to(self, symbol: str) -> bool:
        return not self.symbols or symbol in self.symbols

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "attempt": self.attempt,
            "symbols": list(self.symbols),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Exclusion:
        return cls(
            feature=str(d["feature"]),
            reason=str(d["reason"]),
            evidence=dict(d.get("evidence") or {}),
            attempt=int(d["attempt"]),
            symbols=tuple(d.get("symbols") or ()),
        )


@dataclass(frozen=True)
class Exclusions:
    """Every feature excluded for ``target`` as of ``attempt``: inherited + found here.

    Entries are sorted by feature, one per feature.
    """

    target: str
    attempt: int
    entries: tuple[Exclusion, ...] = field(default=())

    def __post_init__(self) -> None:
        entries = tuple(sorted(self.entries, key=lambda e: e.feature))
        names = [e.feature for e in entries]
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise ValueError(f"features excluded twice for {self.target}: {dupes}")
        late = [e.feature for e in entries if e.attempt > self.attempt]
        if late:
            raise ValueError(f"exclusions from a later attempt than {self.attempt}: {late}")
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "attempt", int(self.attempt))

    def excluded(self) -> frozenset[str]:
        """All excluded features, whatever their scope (what a pooled model must not use)."""
        return frozenset(e.feature for e in self.entries)

    def found_here(self) -> tuple[Exclusion, ...]:
        """Entries found in this attempt: the leaks that were still in its inputs."""
        return tuple(e for e in self.entries if e.attempt == self.attempt)

    def inherited(self) -> tuple[Exclusion, ...]:
        return tuple(e for e in self.entries if e.attempt < self.attempt)

    def for_symbol(self, symbol: str) -> Exclusions:
        """The entries that apply to one symbol: pooled ones + those scoped to it."""
        return Exclusions(
            self.target, self.attempt, tuple(e for e in self.entries if e.applies_to(symbol))
        )

    def summary(self) -> dict[str, Any]:
        return {
            "n_excluded": len(self.entries),
            "n_inherited": len(self.inherited()),
            "n_found_in_this_attempt": len(self.found_here()),
            "by_reason": dict(sorted(Counter(e.reason for e in self.entries).items())),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "attempt": self.attempt,
            "excluded": [e.to_dict() for e in self.entries],
            "found_in_this_attempt": [e.feature for e in self.found_here()],
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Exclusions:
        entries = tuple(Exclusion.from_dict(e) for e in d.get("excluded") or ())
        return cls(target=str(d["target"]), attempt=int(d["attempt"]), entries=entries)


def next_attempt(exclusions: Exclusions, attempt_limit: int) -> int | None:
    """The attempt to run next, or ``None``: the one decision the sensor and the CLI share.

    Attempt ``n+1`` is requested only if attempt ``n`` found leaks (its inputs still held them)
    and ``n+1 < attempt_limit`` (attempts are numbered from 0, so the limit is a count).
    """
    if not exclusions.found_here():
        return None
    nxt = exclusions.attempt + 1
    return nxt if nxt < int(attempt_limit) else None


# --------------------------------------------------------------------------------------------
# rank helpers (numpy, vectorised; shared with selection)


def average_ranks(values: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of ``values`` (ties share their mean rank), within ``groups`` if given.

    NaN values get NaN ranks and do not count. One quicksort of the values (the order among
    ties does not matter: they share a rank), plus a stable sort of the group codes (a radix
    sort for codes below 2**15) when grouped.
    """
    v = np.asarray(values, dtype=float)
    n = v.size
    out = np.full(n, np.nan)
    if n == 0:
        return out
    order = np.argsort(v)  # NaN sort last
    if groups is None:
        order = order[: n - int(np.count_nonzero(np.isnan(v)))]
        gs = None
    else:
        g = np.asarray(groups)
        if g.dtype.kind in "iu" and g.min() >= 0 and g.max() < 2**15:
            g = g.astype(np.int16)
        order = order[np.argsort(g[order], kind="stable")]  # by group, values ascending within
        order = order[~np.isnan(v[order])]
        gs = g[order]
    m = order.size
    if m == 0:
        return out
    vs = v[order]
    new_run = np.ones(m, dtype=bool)
    np.not_equal(vs[1:], vs[:-1], out=new_run[1:])
    pos = np.arange(1, m + 1, dtype=float)
    if gs is not None:
        new_group = np.ones(m, dtype=bool)
        np.not_equal(gs[1:], gs[:-1], out=new_group[1:])
        new_run |= new_group
        starts = np.flatnonzero(new_group)
        pos -= np.repeat(starts, np.diff(np.append(starts, m)))  # ordinal within the group
    if new_run.all():  # no ties: the common case for float features
        out[order] = pos
        return out
    run_starts = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_starts, m))
    run_rank = (pos[run_starts] + pos[run_starts + run_len - 1]) / 2.0
    out[order] = np.repeat(run_rank, run_len)
    return out


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product of two 1-D float arrays, in this thread.

    Not BLAS: OpenBLAS splits a dot product over its threads above 10,000 rows, and on a
    busy 2-core machine (LightGBM's and XGBoost's pools beside it) the hand-off cost up to
    30 ms a call against 0.05 ms here; the dominance test and permutation importance make
    thousands of such calls. A single-threaded sum is also the same whatever the threads.
    """
    return float(np.einsum("i,i->", x, y))


def group_corr(
    a: np.ndarray, b: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of ``a`` and ``b`` within each group code; rows with NaN are skipped.

    Returns (corr, n) arrays of length ``n_groups``; corr is NaN where n < 3 or a side is constant.
    """
    ok = ~(np.isnan(a) | np.isnan(b))
    full = bool(ok.all())
    if n_groups == 1:  # pooled: plain dot products
        x, y = (a, b) if full else (a[ok], b[ok])
        n = np.array([float(x.size)])
        if x.size < 3:
            return np.array([np.nan]), n
        x = x - x.mean()
        y = y - y.mean()
        den = np.sqrt(_dot(x, x) * _dot(y, y))
        return np.array([_dot(x, y) / den if den > 0 else np.nan]), n
    a, b, c = (a, b, codes) if full else (a[ok], b[ok], codes[ok])
    n = np.bincount(c, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.bincount(c, a, n_groups) / n
        mb = np.bincount(c, b, n_groups) / n
        da, db = a - ma[c], b - mb[c]
        sab = np.bincount(c, da * db, n_groups)
        saa = np.bincount(c, da * da, n_groups)
        sbb = np.bincount(c, db * db, n_groups)
        corr = sab / np.sqrt(saa * sbb)
    corr[(n < 3) | ~np.isfinite(corr)] = np.nan
    return corr, n


def rank_ic(x: np.ndarray, y: np.ndarray) -> float:
    """Pooled Spearman rank correlation of ``x`` and ``y`` over rows where both are finite."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    corr, _ = group_corr(average_ranks(x[ok]), average_ranks(y[ok]), np.zeros(0, np.int64), 1)
    return float(corr[0])


# --------------------------------------------------------------------------------------------
# name rules


def name_rule_hits(
    features: Iterable[str],
    target: str,
    targets: Iterable[str],
    rules: Iterable[str],
    attempt: int = 0,
) -> list[Exclusion]:
    """Features whose names say they hold the future: a target's (or label end's) exact name,
    or a case-insensitive substring rule such as ``fwd_``, ``future``, ``target``, ``label``."""
    label_names = {target, *targets}
    label_names |= {"label_end_" + t[len("fwd_ret_") :] for t in label_names if _TARGET_RE.match(t)}
    rules = [r for r in rules if r]
    hits = []
    for feature in sorted(set(features)):
        if feature in label_names:
            evidence: dict[str, Any] = {"rule": "target_name", "matches": feature}
        else:
            rule = next((r for r in rules if r.lower() in feature.lower()), None)
            if rule is None:
                continue
            evidence = {"rule": rule}
        hits.append(Exclusion(feature, "name_rule", evidence, attempt))
    return hits


# --------------------------------------------------------------------------------------------
# look-ahead test


def _sample_symbols(symbols: Iterable[str], max_symbols: int) -> list[str]:
    """A deterministic, evenly spread choice of at most ``max_symbols`` of the sorted symbols."""
    ordered = sorted(symbols)
    if len(ordered) <= max_symbols:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, max_symbols).round().astype(int)
    return [ordered[i] for i in sorted(set(picks.tolist()))]


def _cut_positions(n_rows: int, lookback: int, n_cuts: int, offset: float) -> list[int]:
    """Row positions to truncate at (inclusive), spread over [warm-up, n_rows - 2].

    ``offset`` in (0, 1) shifts the grid per symbol, so different symbols test different bars.
    """
    lo = min(max(int(lookback) + 1, 2), n_rows - 2)
    hi = n_rows - 2  # truncating at the last row would change nothing
    if hi < lo or n_cuts < 1:
        return []
    span = hi - lo + 1
    cuts = {lo + int(span * (i + offset) / n_cuts) for i in range(n_cuts)}
    return sorted(min(c, hi) for c in cuts)


def _compute(spec: FeatureSpec, bars: pd.DataFrame) -> np.ndarray:
    values = spec.compute(bars)
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size != len(bars):
        raise ValueError(f"feature {spec.name!r} returned {arr.size} values for {len(bars)} bars")
    return arr


def _iso(ts: Any) -> str:
    return pd.Timestamp(ts).isoformat()


def lookahead_test(
    bars_by_symbol: Mapping[str, pd.DataFrame],
    specs: Sequence[FeatureSpec],
    n_cuts: int,
    attempt: int,
    max_symbols: int = LOOKAHEAD_MAX_SYMBOLS,
) -> list[Exclusion]:
    """Recompute each computed feature on bars truncated at ``n_cuts`` cut points per symbol.

    A feature whose value at any row <= cut changes when the bars after the cut are removed
    reads the future. At most ``max_symbols`` symbols are tested (evenly spaced in sorted
    order); each gets its own cut grid. Cost: ``(n_cuts + 1)`` computations per feature and
    tested symbol. Evidence: the first change seen (symbol, cut, rows changed, largest
    difference, first changed bar) and how many cuts and symbols showed one.
    """
    symbols = _sample_symbols(bars_by_symbol, max_symbols)
    hits: list[Exclusion] = []
    for spec in sorted(specs, key=lambda s: s.name):
        needs = set(getattr(spec, "needs", ()) or ())
        first: dict[str, Any] | None = None
        tested: list[str] = []
        changed_symbols: list[str] = []
        cuts_tested = cuts_changed = 0
        for j, symbol in enumerate(symbols):
            bars = bars_by_symbol[symbol]
            if not needs <= set(bars.columns):
                continue
            cuts = _cut_positions(len(bars), spec.lookback, n_cuts, (j + 1) / (len(symbols) + 1))
            if not cuts:
                continue
            tested.append(symbol)
            full = _compute(spec, bars)
            stamps = bars["timestamp"].to_numpy()
            seen_here = False
            for cut in cuts:
                cuts_tested += 1
                head = full[: cut + 1]
                trunc = _compute(spec, bars.iloc[: cut + 1].copy())
                changed = ~np.isclose(
                    head, trunc, rtol=LOOKAHEAD_RTOL, atol=LOOKAHEAD_ATOL, equal_nan=True
                )
                if not changed.any():
                    continue
                cuts_changed += 1
                seen_here = True
                if first is None:
                    both = changed & np.isfinite(head) & np.isfinite(trunc)
                    rows = np.flatnonzero(changed)
                    first = {
                        "cut": _iso(stamps[cut]),
                        "symbol": symbol,
                        "rows_changed": int(changed.sum()),
                        "max_abs_diff": float(np.abs(head[both] - trunc[both]).max())
                        if both.any()
                        else 0.0,
                        "nan_mismatches": int((changed & ~both).sum()),
                        "first_changed": _iso(stamps[rows[0]]),
                    }
            if seen_here:
                changed_symbols.append(symbol)
        if first is not None:
            evidence = {
                **first,
                "cuts_tested": cuts_tested,
                "cuts_changed": cuts_changed,
                "symbols_tested": tested,
                "symbols_changed": changed_symbols,
            }
            log.info("look-ahead: %s changes at rows <= cut (%s)", spec.name, first)
            hits.append(Exclusion(spec.name, "lookahead", evidence, attempt))
    return hits


# --------------------------------------------------------------------------------------------
# dominance test


def horizon_of(target: str) -> int:
    """The horizon in bars of a ``fwd_ret_{h}`` target."""
    m = _TARGET_RE.match(target)
    if not m:
        raise ValueError(f"target {target!r} is not of the form fwd_ret_{{h}}")
    return int(m.group(1))


def purged_test_folds(
    timestamps: np.ndarray, label_end: np.ndarray | None, horizon: int, settings: Settings
) -> list[np.ndarray]:
    """Test row positions of each ``PurgedKFold(n_splits, horizon, embargo)`` fold."""
    splitter = PurgedKFold(settings.n_splits, horizon, settings.embargo_for(horizon))
    return [
        np.asarray(test, dtype=np.int64)
        for _, test in splitter.split(timestamps, groups=timestamps, label_end=label_end)
    ]


def symbol_codes(symbols: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(sorted symbol names, int64 code per row); cheap for the panel's Categorical column."""
    if isinstance(symbols.dtype, pd.CategoricalDtype):
        cat = symbols.cat.remove_unused_categories()
        names = np.asarray(cat.cat.categories, dtype=object)
        order = np.argsort(names.astype(str), kind="stable")
        remap = np.empty(order.size, dtype=np.int64)
        remap[order] = np.arange(order.size)
        return names[order], remap[cat.cat.codes.to_numpy().astype(np.int64)]
    names, codes = np.unique(symbols.astype(str).to_numpy(), return_inverse=True)
    return names, codes.astype(np.int64)


def _oof_rank_ic(
    column: np.ndarray,
    fold_rows: list[np.ndarray],
    y_folds: list[np.ndarray],
    y_ranks: list[np.ndarray],
    fold_codes: list[np.ndarray] | None,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed out-of-fold rank IC of one feature, per group: (ic[n_groups], rows[n_groups]).

    ``column`` is the whole panel column; ``fold_rows`` are each fold's test rows in it. On each
    fold's test rows the rank IC is exact (ranked once per fold, within each group if grouped).
    The sign of the one-feature "model" for fold k is learned without fold k: from the other
    folds' rank ICs, weighted by rows (a single sign cannot carry fold k's labels).
    """
    k_folds = len(fold_rows)
    ics = np.zeros((k_folds, n_groups))
    ns = np.zeros((k_folds, n_groups))
    for k, rows in enumerate(fold_rows):
        xk = column[rows]
        ck = fold_codes[k] if fold_codes is not None else None
        nan = np.isnan(xk)
        # where the feature is missing, y is ranked again over the rows where it exists
        yr = average_ranks(np.where(nan, np.nan, y_folds[k]), ck) if nan.any() else y_ranks[k]
        codes = ck if ck is not None else np.zeros(0, dtype=np.int64)
        corr, n = group_corr(average_ranks(xk, ck), yr, codes, n_groups)
        ics[k] = np.nan_to_num(corr)
        ns[k] = np.where(np.isnan(corr), 0.0, n)
    weighted = ics * ns
    signs = np.sign(weighted.sum(axis=0)[None, :] - weighted)  # sign from the other folds
    rows_total = ns.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        oof = (signs * weighted).sum(axis=0) / rows_total
    return np.where(rows_total > 0, oof, np.nan), rows_total


def dominance_test(
    panel_frame: pd.DataFrame,
    target: str,
    features: Sequence[str],
    settings: Settings,
    attempt: int,
    horizon: int | None = None,
    per_symbol: Iterable[str] = (),
) -> list[Exclusion]:
    """Flag features that score implausibly well alone (single-feature OOF rank IC).

    Pooled over all rows, under ``PurgedKFold(n_splits, h, embargo)``: a feature is flagged when
    ``|IC| > settings.dominance_rank_ic`` ("abs_rank_ic"), or when ``|IC| > DOMINANCE_FLOOR`` and
    ``|IC| > settings.dominance_ratio x`` the median ``|IC|`` of the other features ("ratio").
    Features in ``per_symbol`` (user columns) not flagged pooled are also tested per symbol on
    the same folds and flagged, scoped to the symbol, where ``|IC_s| >
    max(dominance_rank_ic, PER_SYMBOL_Z * sqrt(h / rows_s))``.
    Cost: one sort of each fold's test rows per feature (plus one per symbol-tested feature).
    """
    h = horizon if horizon is not None else horizon_of(target)
    features = list(dict.fromkeys(features))
    if not features:
        return []
    # work on column arrays and row positions: no copy of the panel
    valid = np.flatnonzero(np.isfinite(panel_frame[target].to_numpy(dtype=float)))
    label_col = f"label_end_{h}"
    label_end = panel_frame[label_col].to_numpy()[valid] if label_col in panel_frame else None
    folds = purged_test_folds(panel_frame["timestamp"].to_numpy()[valid], label_end, h, settings)
    fold_rows = [valid[f] for f in folds if f.size]
    if not fold_rows:
        log.warning("dominance test for %s: no folds (%d rows); nothing tested", target, valid.size)
        return []
    y_all = panel_frame[target].to_numpy(dtype=float)
    y_folds = [y_all[rows] for rows in fold_rows]
    y_ranks = [average_ranks(yk) for yk in y_folds]

    def column(name: str) -> np.ndarray:
        return panel_frame[name].to_numpy(dtype=float)

    ics = np.empty(len(features))
    rows = np.empty(len(features))
    for i, feat in enumerate(features):
        ic, n = _oof_rank_ic(column(feat), fold_rows, y_folds, y_ranks, None, 1)
        ics[i], rows[i] = ic[0], n[0]
    abs_ic = np.abs(np.nan_to_num(ics))

    hits: list[Exclusion] = []
    flagged: set[str] = set()
    for i, feat in enumerate(features):
        others = np.delete(abs_ic, i)
        med = float(np.median(others)) if others.size else 0.0
        ratio = float(abs_ic[i] / med) if med > 0 else float("inf")
        if abs_ic[i] > settings.dominance_rank_ic:
            rule = "abs_rank_ic"
        elif abs_ic[i] > DOMINANCE_FLOOR and abs_ic[i] > settings.dominance_ratio * med:
            rule = "ratio"
        else:
            continue
        evidence = {
            "rule": rule,
            "rank_ic": float(ics[i]),
            "threshold": settings.dominance_rank_ic,
            "median_abs_rank_ic": med,
            "ratio": ratio if np.isfinite(ratio) else None,
            "dominance_ratio": settings.dominance_ratio,
            "floor": DOMINANCE_FLOOR,
            "rows": int(rows[i]),
            "folds": len(fold_rows),
        }
        log.info("dominance: %s scores alone %s", feat, evidence)
        hits.append(Exclusion(feat, "dominance", evidence, attempt))
        flagged.add(feat)

    rest = [f for f in dict.fromkeys(per_symbol) if f in features and f not in flagged]
    uniq, codes = symbol_codes(panel_frame["symbol"]) if rest else (np.array([]), None)
    if rest and uniq.size > 1:
        fold_codes = [codes[r] for r in fold_rows]
        y_ranks_g = [average_ranks(yk, ck) for yk, ck in zip(y_folds, fold_codes, strict=True)]
        for feat in rest:
            ic, n = _oof_rank_ic(column(feat), fold_rows, y_folds, y_ranks_g, fold_codes, uniq.size)
            with np.errstate(invalid="ignore", divide="ignore"):
                thr = np.maximum(settings.dominance_rank_ic, PER_SYMBOL_Z * np.sqrt(h / n))
            bad = np.flatnonzero(np.isfinite(ic) & (n > 0) & (np.abs(ic) > thr))
            if bad.size == 0:
                continue
            by_symbol = {
                str(uniq[s]): {
                    "rank_ic": float(ic[s]),
                    "threshold": float(thr[s]),
                    "rows": int(n[s]),
                }
                for s in bad
            }
            evidence = {
                "rule": "per_symbol",
                "z": PER_SYMBOL_Z,
                "by_symbol": by_symbol,
                "folds": len(fold_rows),
            }
            log.info("dominance: user column %s scores alone in %s", feat, sorted(by_symbol))
            hits.append(Exclusion(feat, "dominance", evidence, attempt, tuple(by_symbol)))
    return hits


# --------------------------------------------------------------------------------------------
# lead profile (user columns: leaks by timing)

POOLED = "pooled"
LEAD_KINDS = ("return", "abs_return")
# a scope needs this many dates (pooled) or rows (per symbol), and a date this many symbols
LEAD_MIN_OBS = 3
# The implied rank IC of a block of leads 1..j with the j-bar return (the block's typical
# single-bar IC x sqrt(j)) above which a copy of those bars is suspected. Honest signals
# stay well below: on the built-in real data (AAPL, GOOG, IBM, MSFT 2000-2013) the largest
# block that passes the other two conditions is one name's close_loc against its next bar
# (0.13, a bid-ask-bounce reversal); the weakest planted leak (one file's fwd_ret_5 at a
# correlation of 0.3) scores 0.3, a shifted 5-bar return 0.38-0.47, centered windows 0.5+.
LEAD_RETURN_IC = 0.2
# The typical single-bar rank IC with |return| over leads 1..j, above the level beyond the
# horizon, that flags a peek at future volatility. Not scaled by sqrt(j): honest volatility
# features predict |return| over many bars (clustering), and their excess over the level
# beyond h peaks at 0.11 on the real data; a 5-bar future volatility scores 0.29-0.37.
LEAD_ABS_IC = 0.2
# How many standard errors the block's mean IC must clear (per scope, per column and lead
# block: hundreds of tests, most of them on one symbol's few hundred bars).
LEAD_Z = 5.0
# Concentration where a copy would put it: the first bars' IC (the mean of leads 1 and 2,
# less noisy than lead 1 alone) must carry at least this share of the block's typical IC
# (a copy of bars 1..j always includes bar 1; an honest signal whose power sits at one far
# lead has none there).
LEAD_FIRST_SHARE = 0.5


@dataclass(frozen=True)
class LeadProfiles:
    """Rank ICs of columns against single future bars, pooled per date and per symbol.

    ``ic[kind, scope, column, lead - 1]`` for leads ``1 .. 2 * horizon``: kind 0 is the
    signed single-bar return ``lead`` bars ahead (of the row's own symbol, in its own bars),
    kind 1 its absolute value; scope 0 is ``"pooled"`` (the mean over dates of the
    cross-sectional rank IC), scopes 1.. each symbol (its time-series rank IC). Leads past
    ``horizon`` are the reference: the level a column keeps beyond the label's bars.
    ``se[scope, column]``: the standard error of one lead's IC were the column unrelated to
    returns (``sqrt(sum_d 1 / (n_d - 1)) / n_dates`` pooled, ``1 / sqrt(n - 1)`` per symbol:
    single-bar returns do not overlap). ``rho[scope, column, lag]`` (lags ``0 .. horizon -
    1``): the column's rank autocorrelation (pooled: of its cross-sectional ranks), which
    makes the ICs of neighbouring leads move together. ``n[scope, column]``: dates (pooled)
    or rows (per symbol) behind the ICs. NaN where a scope has too few of them.
    """

    columns: tuple[str, ...]
    scopes: tuple[str, ...]
    horizon: int
    ic: np.ndarray
    se: np.ndarray
    rho: np.ndarray
    n: np.ndarray


def _sorted_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row order sorting ``codes`` stably, start of each group in it, each group's code)."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    return order, starts, c[starts]


def _standardised_ranks(
    values: np.ndarray, codes: np.ndarray, order: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Within-group average ranks of each column of ``values``, centred and scaled to unit
    norm per group, rows in ``order``; and which (group, column) are usable (at least
    LEAD_MIN_OBS rows, not constant). Unusable ones are 0, so they drop out of every sum of
    products: a group's IC is then one dot product."""
    m, k = values.shape
    z = np.empty((m, k))
    for j in range(k):  # one sort per column; the rows are never looped over
        z[:, j] = average_ranks(values[:, j], codes)[order]
    sizes = np.diff(np.r_[starts, m])
    z -= np.repeat((sizes + 1.0) / 2.0, sizes)[:, None]  # average ranks have mean (n + 1) / 2
    norm = np.sqrt(np.add.reduceat(z * z, starts, axis=0))
    usable = (norm > 1e-12) & (sizes >= LEAD_MIN_OBS)[:, None]
    z *= np.repeat(np.where(usable, 1.0 / np.where(usable, norm, 1.0), 0.0), sizes, axis=0)
    return z, usable


def _lagged_products(z: np.ndarray, starts: np.ndarray, lags: int) -> np.ndarray:
    """Per group and column, ``sum_i z[i] z[i + lag]`` within the group (rows in time order):
    the autocorrelation of unit-norm columns. Shape (groups, columns, lags)."""
    m, k = z.shape
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, m]))
    out = np.zeros((starts.size, k, lags))
    out[:, :, 0] = 1.0
    for lag in range(1, min(lags, m)):
        same = group[lag:] == group[:-lag]
        prod = np.where(same[:, None], z[lag:] * z[:-lag], 0.0)
        out[:, :, lag] = np.add.reduceat(np.r_[prod, np.zeros((lag, k))], starts, axis=0)
    return out


def _cross_sectional_autocorr(
    z: np.ndarray, dates: np.ndarray, symbols: np.ndarray, usable: np.ndarray, lags: int
) -> np.ndarray:
    """Per column, the mean over date pairs (t, t + lag) of the dot product of the unit-norm
    cross-sectional ranks on the symbols the two dates share. Shape (columns, lags)."""
    n_dates, n_symbols = int(dates.max()) + 1, int(symbols.max()) + 1
    out = np.zeros((z.shape[1], lags))
    out[:, 0] = 1.0
    for j in range(z.shape[1]):  # a dense dates x symbols grid per column, not per row
        grid = np.zeros((n_dates, n_symbols))
        grid[dates, symbols] = z[:, j]
        ok = usable[:, j]
        for lag in range(1, min(lags, n_dates)):
            pairs = ok[lag:] & ok[:-lag]
            if pairs.any():
                prod = np.einsum("ij,ij->i", grid[lag:], grid[:-lag])
                out[j, lag] = float(prod[pairs].mean())
    return out


def lead_profiles(
    frame: pd.DataFrame, columns: Sequence[str], bar_return: np.ndarray, horizon: int
) -> LeadProfiles:
    """Rank IC of each column with each single future bar's return and |return|, at leads
    ``1 .. 2 * horizon`` (bars of the row's own symbol), pooled per date and per symbol.

    ``bar_return``: per panel row, the 1-bar return into its bar (the panel's ``ret_1``).
    Only rows with all ``2 * horizon`` future bars are used (each symbol loses its last
    ``2 * horizon`` bars), so every lead is scored on the same rows; columns NaN on other
    rows are scored on their own rows (columns with one pattern share the leads' ranks).
    Vectorised: one rank sort per column and per lead within dates and within symbols, one
    matrix product pooled and one per symbol; no loop over rows.
    """
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    columns = list(dict.fromkeys(columns))
    names, codes = symbol_codes(frame["symbol"])
    ts = frame["timestamp"].to_numpy()
    n_leads = 2 * h
    fwd = forward_bar_returns(ts, codes, bar_return, np.arange(1, n_leads + 1))
    date_codes = pd.factorize(ts, sort=True)[0].astype(np.int64)
    scopes = (POOLED, *(str(s) for s in names))
    n_scopes, n_cols = len(scopes), len(columns)
    ic = np.full((2, n_scopes, n_cols, n_leads), np.nan)
    se = np.full((n_scopes, n_cols), np.nan)
    rho = np.zeros((n_scopes, n_cols, h))
    rho[:, :, 0] = 1.0
    count = np.zeros((n_scopes, n_cols))
    x_all = np.empty((len(frame), n_cols))
    for j, c in enumerate(columns):
        x_all[:, j] = frame[c].to_numpy(dtype=np.float64)
    finite = np.isfinite(x_all) & np.isfinite(fwd).all(axis=1)[:, None]
    patterns: dict[bytes, list[int]] = {}
    for j in range(n_cols):
        patterns.setdefault(np.packbits(finite[:, j]).tobytes(), []).append(j)

    def split(block: np.ndarray, k: int) -> np.ndarray:  # (cols, 2 * leads) -> (2, cols, leads)
        return block.reshape(k, 2, n_leads).transpose(1, 0, 2)

    for cols in patterns.values():
        rows = np.flatnonzero(finite[:, cols[0]])
        if rows.size < LEAD_MIN_OBS:
            continue
        x = x_all[rows][:, cols]
        both = np.concatenate([fwd[rows], np.abs(fwd[rows])], axis=1)
        k = len(cols)
        # pooled: cross-sectional rank ICs per date, averaged over the usable dates
        dc = date_codes[rows]
        order, starts, _ = _sorted_groups(dc)
        zx, ux = _standardised_ranks(x, dc, order, starts)
        zr, ur = _standardised_ranks(both, dc, order, starts)
        n_dates = ux.T.astype(float) @ ur.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = (zx.T @ zr) / n_dates
            sizes = np.diff(np.r_[starts, rows.size]).astype(float)
            inv = np.where(sizes > 1, 1.0 / np.maximum(sizes - 1.0, 1.0), 0.0)
            used = ux.sum(axis=0).astype(float)
            se[0, cols] = np.sqrt(inv @ ux) / used
        pooled[n_dates < LEAD_MIN_OBS] = np.nan
        ic[:, 0, cols, :] = split(pooled, k)
        count[0, cols] = used
        dense_day = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, rows.size]))
        rho[0, cols, :] = _cross_sectional_autocorr(zx, dense_day, codes[rows][order], ux, h)
        # per symbol: time-series rank ICs (rows of a symbol stay in time order)
        sc = codes[rows]
        order, starts, groups = _sorted_groups(sc)
        zx, ux = _standardised_ranks(x, sc, order, starts)
        zr, ur = _standardised_ranks(both, sc, order, starts)
        lagged = _lagged_products(zx, starts, h)
        bounds = np.r_[starts, rows.size]
        for g, symbol in enumerate(groups):
            a, b = bounds[g], bounds[g + 1]
            block = zx[a:b].T @ zr[a:b]
            block[~(ux[g][:, None] & ur[g][None, :])] = np.nan
            ic[:, 1 + symbol, cols, :] = split(block, k)
            se[1 + symbol, cols] = 1.0 / np.sqrt(b - a - 1.0) if b - a > 1 else np.nan
            rho[1 + symbol, cols, :] = lagged[g]
            count[1 + symbol, cols] = b - a
    return LeadProfiles(tuple(columns), scopes, h, ic, se, rho, count)


@dataclass(frozen=True)
class LeadHit:
    """The strongest suspicious block of one (kind, scope, column): leads ``1 .. leads``."""

    kind: str
    scope: str
    column: str
    leads: int  # the block is leads 1 .. leads
    lead: int  # the lead with the largest |IC| in the block
    rank_ic: float  # the IC at ``lead``
    block_rank_ic: float  # the block's typical (median) IC above the reference level
    reference_rank_ic: float  # the median IC at leads horizon + 1 .. 2 * horizon
    score: float  # block_rank_ic * sqrt(leads) (return) or block_rank_ic (abs_return)
    threshold: float
    z: float
    n: int

    def evidence(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "leads": [1, self.leads],
            "lead": self.lead,
            "rank_ic": self.rank_ic,
            "block_rank_ic": self.block_rank_ic,
            "reference_rank_ic": self.reference_rank_ic,
            "score": self.score,
            "threshold": self.threshold,
            "z": self.z,
            "z_threshold": LEAD_Z,
            "n": self.n,
        }


def lead_profile_hits(profiles: LeadProfiles) -> list[LeadHit]:
    """Every (kind, scope, column) whose profile looks like a copy of future bars.

    For each block of leads ``1..j`` (``j <= horizon``), with ``d_k = IC_k - ref`` (``ref``:
    the median IC at leads ``h+1 .. 2h``, the level the column keeps beyond the label's
    bars; it absorbs honest persistence such as volatility clustering):

    - strong: the block's typical IC ``fill = sign * median(d_1..d_j)`` reaches
      ``LEAD_RETURN_IC / sqrt(j)`` (return: the implied IC with the j-bar return) or
      ``LEAD_ABS_IC`` (abs_return);
    - real: ``|mean(d_1..d_j)|`` exceeds ``LEAD_Z`` standard errors, the error of a mean of
      j lead ICs that co-move as much as the column's autocorrelation makes them;
    - concentrated where a copy would put it: ``sign * mean(d_1, d_2) >= LEAD_FIRST_SHARE *
      fill`` (``d_1`` alone for ``j = 1``).

    The block with the largest score is reported. Vectorised over kinds, scopes and
    columns; the only loop runs over j (at most ``horizon``).
    """
    h = profiles.horizon
    ic = profiles.ic
    ref = np.median(ic[..., h : 2 * h], axis=-1)
    # signed returns: no reference. Honest signed ICs beyond h are ~0 (real data: |ref| <
    # 0.03), while a leak that copies more than h bars (fwd_ret_10 tested at h = 5) would
    # lift its own reference and hide.
    ref[0] = 0.0
    d = ic[..., :h] - ref[..., None]  # (kinds, scopes, cols, h)
    rho = np.clip(np.nan_to_num(profiles.rho), 0.0, 1.0)  # negative co-movement: not relied on
    best_score = np.full(d.shape[:3], -np.inf)
    best = np.zeros(d.shape[:3] + (3,))  # j, fill, z
    scale = np.array([1.0, 0.0])  # return: sqrt(j) scaling; abs_return: none
    threshold = np.array([LEAD_RETURN_IC, LEAD_ABS_IC])[:, None, None]
    for j in range(1, h + 1):
        mean = d[..., :j].mean(axis=-1)
        sign = np.where(mean < 0, -1.0, 1.0)
        fill = sign * np.median(d[..., :j], axis=-1)
        lag = np.arange(1, j)
        factor = (j + 2.0 * ((j - lag) * rho[..., 1:j]).sum(axis=-1)) / j**2  # (scopes, cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(mean) / (profiles.se * np.sqrt(factor))[None]
        score = fill * np.where(scale[:, None, None] > 0, np.sqrt(j), 1.0)
        first = sign * d[..., : min(j, 2)].mean(axis=-1)  # the next one or two bars
        ok = (score >= threshold) & (z >= LEAD_Z) & (first >= LEAD_FIRST_SHARE * fill)
        ok &= np.isfinite(score) & np.isfinite(z) & (score > best_score)
        best_score = np.where(ok, score, best_score)
        best[ok] = np.stack([np.full(ok.sum(), j), fill[ok], z[ok]], axis=-1)
    hits = []
    for kind, scope, col in zip(*np.nonzero(np.isfinite(best_score)), strict=True):
        j = int(best[kind, scope, col, 0])
        block = ic[kind, scope, col, :j]
        top = int(np.argmax(np.abs(block)))
        hits.append(
            LeadHit(
                kind=LEAD_KINDS[kind],
                scope=profiles.scopes[scope],
                column=profiles.columns[col],
                leads=j,
                lead=top + 1,
                rank_ic=float(block[top]),
                block_rank_ic=float(best[kind, scope, col, 1]),
                reference_rank_ic=float(ref[kind, scope, col]),
                score=float(best_score[kind, scope, col]),
                threshold=float(threshold[kind, 0, 0]),
                z=float(best[kind, scope, col, 2]),
                n=int(profiles.n[scope, col]),
            )
        )
    return hits


def bar_returns(panel_frame: pd.DataFrame) -> np.ndarray:
    """The 1-bar log return into each row's bar: the panel's ``ret_1`` (always computed: it
    needs only ``close``, which every bar file has)."""
    if "ret_1" not in panel_frame.columns:
        raise ValueError("the lead profile needs the panel's ret_1 column (1-bar returns)")
    return panel_frame["ret_1"].to_numpy(dtype=np.float64)


def lead_profile_test(
    panel_frame: pd.DataFrame, features: Sequence[str], horizon: int, attempt: int
) -> list[Exclusion]:
    """Flag user columns whose IC with single future bars looks like a copy of those bars.

    :func:`lead_profiles` at leads ``1 .. 2 * horizon``, judged by :func:`lead_profile_hits`.
    A column flagged pooled is excluded for every symbol (evidence: the strongest pooled
    hit, ``scope: "pooled"``); one flagged only in some symbols' time series is excluded
    for those symbols (evidence ``by_symbol``), like the dominance test's per-symbol rule.
    """
    features = list(dict.fromkeys(features))
    if not features:
        return []
    profiles = lead_profiles(panel_frame, features, bar_returns(panel_frame), horizon)
    by_column: dict[str, list[LeadHit]] = {}
    for hit in lead_profile_hits(profiles):
        by_column.setdefault(hit.column, []).append(hit)
    out = []
    for feature in features:
        hits = by_column.get(feature)
        if not hits:
            continue
        pooled = [x for x in hits if x.scope == POOLED]
        base = {"rule": "lead_profile", "test": "lead_profile", "horizon": int(horizon)}
        if pooled:
            top = max(pooled, key=lambda x: x.score / x.threshold)
            evidence = {**base, "scope": POOLED, **top.evidence()}
            symbols: tuple[str, ...] = ()
        else:
            per_symbol: dict[str, LeadHit] = {}
            for x in hits:
                if x.scope not in per_symbol or x.score / x.threshold > (
                    per_symbol[x.scope].score / per_symbol[x.scope].threshold
                ):
                    per_symbol[x.scope] = x
            evidence = {
                **base,
                "scope": "symbols",
                "by_symbol": {s: x.evidence() for s, x in sorted(per_symbol.items())},
            }
            symbols = tuple(sorted(per_symbol))
        log.info("lead profile: %s looks like a copy of future bars (%s)", feature, evidence)
        out.append(Exclusion(feature, "lead_profile", evidence, attempt, symbols))
    return out


# --------------------------------------------------------------------------------------------
# the whole detection of one attempt


def detect_leaks(
    panel: Panel,
    target: str,
    horizon: int,
    specs: Sequence[FeatureSpec],
    bars_by_symbol: Mapping[str, pd.DataFrame],
    settings: Settings,
    attempt: int,
    inherited: Exclusions | None,
) -> Exclusions:
    """Run the four tests on the features that earlier attempts did not exclude.

    Returns ``inherited``'s entries plus the ones found here (attempt ``attempt``). Only specs
    whose feature is in the panel are recomputed; user columns (not in ``specs``) are covered
    by the name rules, the dominance test (pooled and per symbol) and, for those it lets
    through, the lead profile (:func:`lead_profile_test`).
    """
    if target not in panel.frame.columns:
        raise ValueError(f"target {target!r} is not a column of the panel")
    if inherited is not None:
        if inherited.target != target:
            raise ValueError(f"inherited exclusions are for {inherited.target!r}, not {target!r}")
        if inherited.attempt >= attempt:
            raise ValueError(f"attempt {attempt} cannot inherit from attempt {inherited.attempt}")
        previous = inherited.entries
    else:
        previous = ()
    done = {e.feature for e in previous}
    candidates = [f for f in panel.features if f not in done]
    targets = tuple(getattr(panel, "targets", None) or settings.targets)

    found = name_rule_hits(candidates, target, targets, settings.name_rules, attempt)
    done |= {e.feature for e in found}

    specs_here = [s for s in specs if s.name in candidates and s.name not in done]
    found += lookahead_test(bars_by_symbol, specs_here, settings.lookahead_cuts, attempt)
    done |= {e.feature for e in found}

    spec_names = {s.name for s in specs}
    rest = [f for f in candidates if f not in done]
    user = [f for f in rest if f not in spec_names]
    found += dominance_test(
        panel.frame, target, rest, settings, attempt, horizon=horizon, per_symbol=user
    )
    done |= {e.feature for e in found}

    # user columns the dominance test let through: do they peek at the next bars?
    found += lead_profile_test(panel.frame, [f for f in user if f not in done], horizon, attempt)

    result = Exclusions(target, attempt, tuple(previous) + tuple(found))
    log.info(
        "%s attempt %d: %d inherited, %d found (%s)",
        target,
        attempt,
        len(previous),
        len(found),
        ", ".join(f"{e.feature}:{e.reason}" for e in result.found_here()) or "none",
    )
    return result
