"""Settings from the Launchpad: every setting of :class:`cohortflow.settings.Settings` as an
optional field of one resource, ``launchpad``, so one run or one backfill can change
``n_splits`` or the models' trees without editing the YAML::

    resources:
      launchpad:
        config:
          n_splits: 4
          models: {n_estimators: 100}

A resource of its own, not a field of ``cohortflow``: run config given for a resource
replaces all its config, and ``cohortflow``'s data folder and output root would fall back
to their class defaults. The steps take both; the sensors only ``cohortflow``.

The fields are generated from the settings model itself (names, descriptions), so the
form never drifts from the settings. A field left empty keeps the code location's value
(``COHORTFLOW_SETTINGS``' YAML, or the defaults); a value given is validated exactly like a
YAML value (one line per problem, ``Launchpad: n_splits: expected ...``).

``horizons`` is not a field: the horizons name the graph's assets (``fwd_ret_5/...``), which
are fixed per code location. To run fewer targets, select their assets.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, get_args, get_origin

from dagster import Config, ConfigurableResource
from pydantic import Field, create_model

from cohortflow.settings import ModelSettings, Settings

#: the settings a run cannot change (they define the graph's assets)
FIXED = frozenset({"horizons"})
SOURCE = "Launchpad"


def _config_type(annotation: Any) -> Any:
    """The Dagster-config type of a settings field: scalars as they are, tuples as lists,
    literals as text (the settings model checks the choice)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin is tuple or annotation is tuple:
        return list[str] if str in _leaves(annotation) else list[int]
    for leaf in (bool, int, float, str):
        if annotation is leaf or leaf in _leaves(annotation):
            return leaf
    raise TypeError(f"no Launchpad type for {annotation!r}")


def _leaves(annotation: Any) -> set[Any]:
    """The plain types an annotation is made of (through Annotated, Optional, tuple)."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaves(a) for a in args))


def _overrides_of(
    model: type[Any], name: str, base: type[Config], nested: dict[str, type[Config]]
) -> Any:
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        if key in FIXED:
            continue
        if key in nested:
            kind: Any = nested[key]
        else:
            kind = _config_type(info.annotation)
        fields[key] = (Optional[kind], Field(default=None, description=info.description))  # noqa: UP045
    return create_model(name, __base__=base, **fields)


ModelOverrides = _overrides_of(ModelSettings, "ModelOverrides", Config, {})
_Generated = _overrides_of(Settings, "_Generated", ConfigurableResource, {"models": ModelOverrides})


class LaunchpadSettings(_Generated):  # type: ignore[misc, valid-type]
    """Settings for this run only (the Launchpad's ``resources.launchpad.config``); empty
    fields keep the code location's settings."""

    def changes(self) -> dict[str, Any]:
        """The settings this run's config sets (empty: none)."""
        return given(self)


def given(overrides: Any) -> dict[str, Any]:
    """The fields a user set, as plain values (``models`` as a mapping of its set fields)."""
    out: dict[str, Any] = {}
    for key in type(overrides).model_fields:
        value = getattr(overrides, key)
        if isinstance(value, Config):
            value = given(value)
            if not value:
                continue
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def apply(settings: Settings, changes: dict[str, Any]) -> Settings:
    """``settings`` with the Launchpad's ``changes`` (``models`` merged field by field),
    validated like a YAML file; a SettingsError names the Launchpad and the key."""
    if not changes:
        return settings
    merged = dict(changes)
    if "models" in merged:
        merged["models"] = {**settings.models.to_dict(), **merged["models"]}
    return settings.replace(source=SOURCE, **merged)
