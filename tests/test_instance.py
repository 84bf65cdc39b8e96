"""The instance class of cohortflow's DAGSTER_HOME: dynamic-partition membership is
remembered for a few seconds, absent keys and deletions are never remembered."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from resources.instance import CohortflowInstance


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_lookups(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str]]:
    """The (definition, key) lookups that reach the instance's storage from now on."""
    asked: list[tuple[str, str]] = []
    storage = instance._event_storage
    real = storage.has_dynamic_partition

    def lookup(name: str, key: str) -> bool:
        asked.append((name, key))
        return real(name, key)

    monkeypatch.setattr(storage, "has_dynamic_partition", lookup)
    return asked


@pytest.fixture
def counted(dagster_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The home's instance, a fake monotonic clock, and the storage lookups it made."""
    clock = Clock()
    instance = DagsterInstance.get()
    instance._clock = clock
    yield instance, clock, count_lookups(instance, monkeypatch)
    instance.dispose()


def test_the_home_names_the_class(counted) -> None:
    instance, _, _ = counted
    assert type(instance) is CohortflowInstance


def test_a_found_key_is_asked_once_within_the_ttl(counted) -> None:
    instance, clock, asked = counted
    instance.add_dynamic_partitions("universe_batch", ["ab12cd34ef56"])
    for _ in range(50):
        assert instance.has_dynamic_partition("universe_batch", "ab12cd34ef56")
        clock.now += 0.09  # 4.5 s in all
    assert asked == [("universe_batch", "ab12cd34ef56")]
    clock.now += 0.6  # past 5 s since it was found
    assert instance.has_dynamic_partition("universe_batch", "ab12cd34ef56")
    assert len(asked) == 2


def test_an_absent_key_is_asked_every_time(counted) -> None:
    instance, _, asked = counted
    assert not instance.has_dynamic_partition("attempt", "1")
    instance.add_dynamic_partitions("attempt", ["1"])
    assert instance.has_dynamic_partition("attempt", "1")  # seen at once, not remembered absent
    assert len(asked) == 2


def test_deleting_forgets(counted) -> None:
    instance, _, asked = counted
    instance.add_dynamic_partitions("attempt", ["0"])
    assert instance.has_dynamic_partition("attempt", "0")
    instance.delete_dynamic_partition("attempt", "0")
    assert not instance.has_dynamic_partition("attempt", "0")
    assert len(asked) == 2


def test_ttl_zero_turns_it_off(dagster_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (dagster_home / "dagster.yaml").open("a") as f:
        f.write("dynamic_partition_ttl_s: 0\n")
    instance = DagsterInstance.get()
    try:
        instance.add_dynamic_partitions("attempt", ["0"])
        asked = count_lookups(instance, monkeypatch)
        assert instance.has_dynamic_partition("attempt", "0")
        assert instance.has_dynamic_partition("attempt", "0")
        assert asked == [("attempt", "0"), ("attempt", "0")]
    finally:
        instance.dispose()


def test_ensure_dagster_home_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    text = (home / "dagster.yaml").read_text()
    assert "class: CohortflowInstance" in text and "enabled: false" in text
    instance = DagsterInstance.get()
    try:
        assert type(instance) is CohortflowInstance
    finally:
        instance.dispose()
