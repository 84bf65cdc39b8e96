"""Typed settings: strict types, bounds, unknown keys refused, one line per problem naming
the file and the key; fingerprints (and so cohort ids) unchanged for the same values."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from cohortflow.canonical import canonical_json, fingerprint
from cohortflow.errors import SettingsError
from cohortflow.settings import (
    MAX_HORIZON,
    ModelSettings,
    Settings,
    load_settings,
    settings_from_dict,
)

CONFIG = Path(__file__).resolve().parent.parent / "config"

# fingerprints of the shipped settings as the dataclass settings (commit 9b9830f) made them:
# cohort ids and attempt records depend on these bytes
DEFAULT_FINGERPRINT = "ac955f7dcdcfa284422ea5e44e9e3fff51da656231be8e7e356c636f8f623a04"
SHIPPED = {
    "default.yaml": DEFAULT_FINGERPRINT,
    "fast.yaml": "4d54750501d55dd9f8a9e1cb1e981d17b8b96d18c2aa007b2bf42ebb16ef8227",
    "demo.yaml": "c0bc8c772c446b1c23216b3f494661e8d864362ca0011a58ec98ae3da5b68ee0",
}
DEFAULT_FIELDS = (
    '{"attempt_limit":3,"corr_threshold":0.95,"demo_leak":false,"dominance_rank_ic":0.3,'
    '"dominance_ratio":5.0,"embargo":null,"horizons":[5,10,20],"lookahead_cuts":6,'
    '"max_rows":2000000,"meta_learner":"ridge","min_cs":1,"min_rows":500,"models":'
    '{"colsample":0.8,"extra_sklearn":[],"learning_rate":0.05,"max_depth":4,'
    '"min_child_samples":50,"n_estimators":200,"num_leaves":15,"reg_lambda":1.0,'
    '"subsample":0.8},"n_probes":3,"n_splits":5,"name_rules":["fwd_","future","target",'
    '"label"],"nonneg_weights":true,"permutation_repeats":3,"quick_estimators":100,'
    '"scoring_schema_version":"1.2","seed":7,"symbol_views":25,"test_fraction":0.2,'
    '"tune":false,"tune_trials":20}'
)


def test_default_fingerprint_fields_are_byte_identical() -> None:
    fields = Settings().fingerprint_fields()
    assert canonical_json(fields, compact=True) == DEFAULT_FIELDS
    assert fingerprint(fields) == DEFAULT_FINGERPRINT


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_settings_keep_their_fingerprints(name: str) -> None:
    assert fingerprint(load_settings(CONFIG / name).fingerprint_fields()) == SHIPPED[name]


def test_a_registry_record_round_trips_to_the_same_fingerprint() -> None:
    s = load_settings(CONFIG / "fast.yaml")
    fields = json.loads(canonical_json(s.fingerprint_fields()))  # as the registry reads it
    again = settings_from_dict(MappingProxyType(fields), "record")
    assert fingerprint(again.fingerprint_fields()) == fingerprint(s.fingerprint_fields())


def test_the_api_callers_use() -> None:
    s = Settings(horizons=(10, 3), embargo=5, models=ModelSettings(n_estimators=7))
    assert s.targets == ("fwd_ret_10", "fwd_ret_3")
    assert (s.embargo_for(3), s.embargo_for(10)) == (5, 10)
    assert s.models.n_estimators == 7 and s.to_dict()["models"]["n_estimators"] == 7
    assert {"n_threads", "fold_workers", "device", "lightgbm_device"}.isdisjoint(
        s.fingerprint_fields()
    )
    r = s.replace(n_threads=1, seed=9)
    assert (r.seed, r.n_threads, r.fold_workers, s.seed) == (9, 1, 1, 7)  # workers <= threads
    assert hash(Settings()) == hash(Settings()) and Settings() == Settings()
    assert {Settings(): 1}[Settings()] == 1
    with pytest.raises(Exception, match="frozen"):
        s.seed = 3  # type: ignore[misc]
    assert Settings(n_threads=0).n_threads >= 1  # 0 = auto
    assert isinstance(Settings(horizons=[5]).horizons, tuple)


def test_replace_validates() -> None:
    with pytest.raises(SettingsError, match=r"^settings: n_splits: expected .* got 1$"):
        Settings().replace(n_splits=1)


def test_the_schema_is_plain_json() -> None:
    schema = Settings.model_json_schema()
    props = schema["properties"]
    assert props["horizons"]["type"] == "array"
    assert props["horizons"]["items"] == {"maximum": MAX_HORIZON, "minimum": 1, "type": "integer"}
    assert props["demo_leak"]["type"] == "boolean"
    assert schema["additionalProperties"] is False
    json.dumps(schema)


# (yaml text, the one line expected after "{file}: ")
BAD = {
    "horizons text": (
        'horizons: "12"',
        'horizons: expected a list of distinct whole bar counts from 1 to 2520, got "12"',
    ),
    "horizons number": (
        "horizons: 12",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got 12",
    ),
    "quoted false": ('demo_leak: "false"', 'demo_leak: expected true or false, got "false"'),
    "fractional horizon": (
        "horizons: [5.5]",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got [5.5]",
    ),
    "mapping horizons": (
        "horizons: {a: 1}",
        'horizons: expected a list of distinct whole bar counts from 1 to 2520, got {"a": 1}',
    ),
    "bool horizon": (
        "horizons: [true]",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got [true]",
    ),
    "huge horizon": (
        "horizons: [5000]",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got [5000]",
    ),
    "repeated horizon": (
        "horizons: [5, 5]",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got [5, 5]",
    ),
    "no horizon": (
        "horizons: []",
        "horizons: expected a list of distinct whole bar counts from 1 to 2520, got []",
    ),
    "negative trees": (
        "models: {n_estimators: -5}",
        "models.n_estimators: expected a whole number of trees from 1 to 100000, got -5",
    ),
    "text rate": (
        "models: {learning_rate: fast}",
        'models.learning_rate: expected a number above 0, at most 1, got "fast"',
    ),
    "rate above one": (
        "models: {learning_rate: 1.5}",
        "models.learning_rate: expected a number above 0, at most 1, got 1.5",
    ),
    "text seed": ("seed: abc", 'seed: expected a whole number from 0 to 2000000000, got "abc"'),
    "fractional folds": (
        "n_splits: 2.5",
        "n_splits: expected a whole number of folds from 2 to 100, got 2.5",
    ),
    "too many folds": (
        "n_splits: 1000",
        "n_splits: expected a whole number of folds from 2 to 100, got 1000",
    ),
    "text folds": (
        'n_splits: "5"',
        'n_splits: expected a whole number of folds from 2 to 100, got "5"',
    ),
    "half test": (
        "test_fraction: 0.5",
        "test_fraction: expected a number above 0 and below 0.5, got 0.5",
    ),
    "device": ("device: gpu", 'device: expected cpu or cuda, got "gpu"'),
    "unknown key": ("horizon: [5]", "horizon: unknown setting (did you mean horizons?)"),
    "unknown model key": (
        "models: {nestimators: 3}",
        "models.nestimators: unknown setting (did you mean n_estimators?)",
    ),
    "models not a mapping": (
        "models: 3",
        "models: expected a mapping of model settings (n_estimators, learning_rate, ...), got 3",
    ),
    "yaml exponent": (
        "models: {learning_rate: 1e-2}",
        "models.learning_rate: expected a number"
        ' above 0, at most 1, got "1e-2" (YAML reads 1e-2 as text: write it with '
        "a dot, e.g. 0.01)",
    ),
    "negative embargo": (
        "embargo: -1",
        "embargo: expected null or a whole number of bars from 0 to 2520, got -1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_setting_is_one_line_naming_file_and_key(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    assert str(err.value) == f"{path}: {expected}"
    assert err.value.problems == (f"{path}: {expected}",)


def test_several_problems_give_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('horizons: [5, 2.5, "x"]\nseed: -1\nmodels: {n_estimators: 0, subsample: 0}\n')
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "horizons",
        "seed",
        "models.n_estimators",
        "models.subsample",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("horizons: [5\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2"),
        ("seed: 1\nseed: 2\n", "not valid YAML: key 'seed' given twice at line 2, column 1"),
        ("- 5\n- 10\n", "expected a mapping of settings (key: value lines) at the top level"),
    ],
)
def test_unreadable_settings_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(err.value)


def test_empty_file_and_none_are_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("# nothing\n")
    assert load_settings(tmp_path / "s.yaml") == Settings() == load_settings(None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_construction_in_code_is_checked_too() -> None:
    with pytest.raises(SettingsError, match=r"^settings: lightgbm_device: expected auto"):
        Settings(lightgbm_device="metal")
    with pytest.raises(SettingsError, match=r"^settings: n_estimators: expected a whole"):
        ModelSettings(n_estimators=0)
    with pytest.raises(SettingsError, match=r"models\.max_depth"):
        Settings(models={"max_depth": 0})


def test_ints_for_numbers_are_numbers() -> None:
    s = settings_from_dict({"dominance_ratio": 5, "models": {"reg_lambda": 0}})
    assert isinstance(s.dominance_ratio, float) and s.dominance_ratio == 5.0
    assert isinstance(s.models.reg_lambda, float)
