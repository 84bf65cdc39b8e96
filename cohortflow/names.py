"""Validation of names that become path parts: symbols, targets, models, output names.

One strict pattern for all of them: a name starts with a letter or digit and holds only
letters, digits, ``_``, ``-`` and ``.``; ``..`` and anything that could climb out of a
folder are refused.
"""

from __future__ import annotations

import re

from cohortflow.errors import InvalidNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_RESERVED = {"con", "prn", "aux", "nul"}


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe path part, else raise :class:`InvalidNameError`.

    ``kind`` says what the name is ("symbol", "target", "model" ...) for the message.
    """
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"invalid {kind} name {value!r}: empty or not a string")
    if ".." in value or not _NAME.fullmatch(value) or value.lower() in _RESERVED:
        raise InvalidNameError(
            f"invalid {kind} name {value!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return value


def validate_symbol(value: object) -> str:
    """Symbols are validated, then upper-cased (the universe signature upper-cases them too)."""
    return validate_name("symbol", value).upper()
