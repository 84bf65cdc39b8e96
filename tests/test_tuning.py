"""Optional tuning with the real optuna (the `tune` extra): nested inside the OOF folds,
reproducible, saved as JSON by the store."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")

from cohortflow.layout import Scope  # noqa: E402
from cohortflow.oof import SEARCH_SPACES, generate_oof  # noqa: E402
from cohortflow.store import Store  # noqa: E402
from tests.test_oof import FEATURES, TARGET, H, make_panel, small_settings  # noqa: E402


@pytest.fixture(scope="module")
def tuned():
    settings = small_settings(tune=True, tune_trials=2)
    return generate_oof(make_panel(), TARGET, H, FEATURES, settings)


def test_each_fold_is_tuned_on_its_own_training_rows(tuned):
    per_fold = {(m["fold"], m["model"]): m["params"] for m in tuned.fold_metrics}
    assert set(per_fold) == {(f.fold, m) for f in tuned.fold_plan.folds for m in tuned.models}
    for (_, model), params in per_fold.items():
        assert set(params) == {spec[0] for spec in SEARCH_SPACES[model]}
    # the refit parameters come from the whole training window
    assert set(tuned.params) == set(tuned.models)
    assert all(tuned.params[m] for m in tuned.models)


def test_tuning_is_reproducible(tuned):
    again = generate_oof(
        make_panel(), TARGET, H, FEATURES, small_settings(tune=True, tune_trials=2)
    )
    assert again.params == tuned.params
    assert again.frame.equals(tuned.frame)


def test_tuned_params_are_saved_as_json_in_the_attempt_folder(tuned, tmp_path):
    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey

    store = Store(tmp_path)
    store.write(ArtifactKind.OOF, AttemptKey("ab12cd34ef56", 0, TARGET), tuned)
    scope = Scope(TARGET, "TRAINING", "CROSS_SECTIONAL", "ab12cd34ef56", 0)
    path = scope.attempt_dir(tmp_path) / "tuning" / "tuned_params.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(tuned.params))
