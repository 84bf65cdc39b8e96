"""The one module that writes files. Every write is atomic.

On a local filesystem: write a temporary file in the same folder, flush, fsync,
``os.replace`` it over the target, then fsync the folder, so a killed process leaves
either the old file or the new one, never a part. On object storage (any other UPath
protocol) a single PUT is already atomic, so the bytes are written directly.

Locks (``exclusive_lock``) serialise writers of the same partition across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from upath import UPath

from cohortflow.canonical import canonical_json

TMP_PREFIX = ".tmp-"


def is_local(path: Any) -> bool:
    """True for plain paths and ``file://`` UPaths."""
    if isinstance(path, UPath):
        return path.protocol in ("", "file", "local")
    return True


def local_path(path: Any) -> Path:
    return Path(path.path) if isinstance(path, UPath) else Path(path)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Any, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating parent folders."""
    atomic_write_many([(path, data)])


def atomic_write_many(items: Sequence[tuple[Any, bytes]]) -> None:
    """Write each ``(path, data)`` atomically: every file goes to a temp file in its folder
    and is fsync'd, then each is renamed over its path, then each folder is fsync'd once
    (an OOF write puts three files in one folder: one folder fsync, not three).

    Each file is all old or all new at any instant; a reader may see some files new and
    others still old, as with writes one after another (the attempt's ``_COMPLETE`` marker
    is withdrawn first for that reason).
    """
    local = [(p, d) for p, d in items if is_local(p)]
    for path, data in items:
        if not is_local(path):
            upath = UPath(path)
            upath.parent.mkdir(parents=True, exist_ok=True)
            upath.write_bytes(data)
    staged: list[tuple[Path, Path]] = []
    target = None
    try:
        for path, data in local:
            target = local_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f"{TMP_PREFIX}{target.name}.{secrets.token_hex(6)}"
            staged.append((tmp, target))
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        while staged:
            tmp, target = staged[0]
            os.replace(tmp, target)
            staged.pop(0)
    except BaseException as exc:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if isinstance(exc, OSError) and exc.errno is not None and target is not None:
            # name the file being written, not its temporary sibling (which is gone); the
            # same error otherwise, so nothing is lost by leaving the original out
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise
    for folder in dict.fromkeys(local_path(p).parent for p, _ in local):
        fsync_dir(folder)


def atomic_write_text(path: Any, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Any, obj: Any) -> bytes:
    """Write ``obj`` as canonical JSON; return the bytes written (for hashing)."""
    data = canonical_json(obj).encode("utf-8")
    atomic_write_bytes(path, data)
    return data


def remove_file(path: Any) -> None:
    """Remove a file if it exists (used to withdraw a completion marker)."""
    if is_local(path):
        target = local_path(path)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            fsync_dir(target.parent)
    else:
        upath = UPath(path)
        if upath.exists():
            upath.unlink()


def remove_stale_tmp(folder: Any, older_than_s: float = 0.0, recursive: bool = False) -> list[Path]:
    """Delete temporary files a killed writer left behind (local folders only).

    Callers hold the folder's lock, so no live writer of this folder owns a temp file;
    ``older_than_s`` spares younger files for callers that do not.
    """
    import time

    if not is_local(folder):
        return []
    base = local_path(folder)
    if not base.is_dir():
        return []
    pattern = f"**/{TMP_PREFIX}*" if recursive else f"{TMP_PREFIX}*"
    now = time.time()
    removed = []
    for tmp in base.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_file() and now - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                removed.append(tmp)
    return removed


def quarantine(path: Any) -> Any:
    """Move a damaged file aside (``{name}.corrupt-{time}``) so it can be looked at later;
    returns where it went (None if there was nothing to move)."""
    import time

    upath = UPath(path) if not isinstance(path, Path | UPath) else path
    if not upath.exists():
        return None
    target = upath.with_name(
        f"{upath.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    )
    if is_local(upath):
        os.replace(local_path(upath), local_path(target))
        for suffix in ("-wal", "-shm"):  # SQLite's companions belong to the damaged file
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{local_path(upath)}{suffix}", f"{local_path(target)}{suffix}")
    else:
        upath.rename(target)
    return target


@contextlib.contextmanager
def exclusive_lock(lock_path: Any) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``lock_path`` for the block.

    Local filesystems only; on object storage this is a no-op (writes there are single
    PUTs, and one run per partition is Dagster's own guarantee).
    """
    if not is_local(lock_path):
        yield
        return
    path = local_path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def lock_if_free(lock_path: Any) -> Iterator[bool]:
    """Hold the exclusive lock on ``lock_path`` if no one holds it now: yields True while
    held, or False at once (someone is writing; nothing is held). For housekeeping that
    must never wait for, nor race, a live writer. Object storage: always False."""
    if not is_local(lock_path):
        yield False
        return
    path = local_path(lock_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only root: nothing to sweep there either
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
