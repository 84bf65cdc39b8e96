"""The code version recorded on every attempt and cohort.

``code_version()`` is the package version plus the first 12 hex of a sha256 over the core
package's source files (name and bytes, sorted by name): any change to the code that
computes artifacts gives a new code version, so a rerun after an upgrade makes a new
attempt instead of silently changing a sealed one. The Dagster shell also hands it to
every asset as its ``code_version``, so the UI shows which materializations are stale.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from cohortflow import __version__


@functools.cache
def code_version() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py"), key=lambda p: p.name):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"
