"""The stage functions of :mod:`cohortflow.stages` give what their core functions give."""

from __future__ import annotations

import pandas as pd

from cohortflow import stages
from cohortflow.domain import Stage
from cohortflow.features import build_panel
from cohortflow.intake import take_in
from cohortflow.leakage import Exclusions
from cohortflow.selection import compute_importances
from cohortflow.settings import load_settings

TARGET, H = "fwd_ret_5", 5


def test_exclusions_and_ranking_side_by_side_equal_one_after_the_other(
    tmp_path, fast_settings_path
) -> None:
    """The ranking runs beside the leak tests on the inherited exclusions alone: the same
    exclusions and the same ranking as find_exclusions then rank, in attempt 0 and in an
    attempt that inherits a leak (the demo's planted ``future_ret_peek``)."""
    from cohortflow.sampledata import write_sample_universe

    write_sample_universe(tmp_path / "data")
    settings = load_settings(fast_settings_path).replace(
        horizons=(H,), symbol_views=1, quick_estimators=8, n_splits=3, demo_leak=True
    )
    universe = take_in(tmp_path / "data", tmp_path / "scratch", settings).universe
    panel = build_panel(universe, settings)
    previous = None
    for attempt in (0, 1):
        t = stages.TargetAttempt(TARGET, H, universe.batch, attempt, settings, panel, universe)
        excl, ranked = stages.exclusions_and_ranking(t, previous)
        assert excl == stages.find_exclusions(t, previous)
        want = stages.rank(t, excl)
        assert [d.scope for d in ranked.drafts] == [d.scope for d in want.drafts]
        assert [d.metrics for d in ranked.drafts] == [d.metrics for d in want.drafts]
        assert ranked.extras == want.extras
        previous = stages.cross_sectional(excl)
        if attempt == 0:
            assert previous.found_here(), "the demo's leak is found in attempt 0"
    assert stages.cross_sectional(excl).inherited(), "attempt 1 inherits it"


def test_importances_of_all_views_in_one_batch_equal_each_view_alone(
    tmp_path, fast_settings_path
) -> None:
    from cohortflow.synthetic import generate

    generate(tmp_path / "data", fmt="parquet", n_symbols=3, n_bars=300, n_noise=2, seed=3)
    settings = load_settings(fast_settings_path).replace(
        horizons=(H,), symbol_views=2, quick_estimators=8, permutation_repeats=1, n_splits=3
    )
    universe = take_in(tmp_path / "data", tmp_path / "scratch", settings).universe
    panel = build_panel(universe, settings)
    t = stages.TargetAttempt(TARGET, H, universe.batch, 0, settings, panel, universe)
    excl = {t.scope(Stage.TARGET_RANKING): Exclusions(TARGET, 0)}
    got = stages.importances(t, excl)

    symbols = [None, *t.view_symbols]
    assert list(got) == [t.scope(Stage.FEATURE_SELECTION, s) for s in symbols]
    assert len(symbols) == 3
    alone = settings.replace(fold_workers=1)
    for symbol in symbols:
        frame = stages.rows_with_target(t.holdout.train, TARGET, symbol)
        want = compute_importances(frame, TARGET, H, list(panel.features), alone)
        by_model = got[t.scope(Stage.FEATURE_SELECTION, symbol)]
        assert sorted(by_model) == sorted(want)
        for model, frame_want in want.items():
            pd.testing.assert_frame_equal(by_model[model], frame_want, check_exact=True)


def test_the_ranking_table_puts_the_best_score_first_and_unscored_targets_last() -> None:
    """The report's one ranking table (``stages.ranking_table``), from the stored cohorts."""
    from types import SimpleNamespace

    def cohort(view: str, cohort_id: str, score: float | None) -> SimpleNamespace:
        km = (
            {"lightgbm.rank_ic": 0.1}
            if score is None
            else {"score": score, "lightgbm.rank_ic": 0.1}
        )
        return SimpleNamespace(snapshot={"view": view, "cohort_id": cohort_id, "key_metrics": km})

    table = stages.ranking_table(
        {
            "fwd_ret_20": [cohort("CROSS_SECTIONAL", "c20", None)],
            "fwd_ret_5": [
                cohort("CROSS_SECTIONAL", "c5", 0.02),
                cohort("SYMBOL_SPECIFIC", "s", 0.0),
            ],
            "fwd_ret_10": [cohort("CROSS_SECTIONAL", "c10", 0.08)],
            "fwd_ret_1": [cohort("SYMBOL_SPECIFIC", "only_symbol", 0.5)],  # no pooled cohort
        }
    )
    assert table["target"].tolist() == ["fwd_ret_10", "fwd_ret_5", "fwd_ret_20"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["n_symbol_cohorts"].tolist() == [0, 1, 0]
    assert table["cohort_id"].tolist() == ["c10", "c5", "c20"]
