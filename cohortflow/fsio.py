"""The one module that writes files. Every write is atomic.

On a local filesystem: write a temporary file in the same folder, flush, fsync,
``os.replace`` it over the target, then fsync the folder, so a killed process leaves
either the old file or the new one, never a part. On object storage (any other UPath
protocol) a single PUT is already atomic, so the bytes are written directly.

Locks (``exclusive_lock``) serialise writers of the same partition across processes:
``flock`` on a local filesystem, a lease object on S3 (:class:`S3Lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import fsspec.config
from upath import UPath

from cohortflow.canonical import canonical_json
from cohortflow.errors import StoreError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"

# Several processes (cluster workers) read and write one tree, so a folder listing must
# never answer for the bucket: s3fs otherwise answers exists()/info() of a path from a
# listing it cached earlier in this process and misses files other workers wrote since
# (a sealed folder read as unsealed, a marker as absent). setdefault: an explicit
# FSSPEC_S3 / storage option still wins.
for _protocol in ("s3", "s3a"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


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
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
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


# --------------------------------------------------------------------------- locks
LOCK_LEASE_S = 60.0  # an S3 lock not renewed for this long is abandoned (its holder died)
S3_PROTOCOLS = ("s3", "s3a")


class LockLostError(StoreError):
    """A lock on object storage was taken over while its block ran (its holder stopped
    renewing it for longer than the lease): other writers may have interleaved."""


@contextlib.contextmanager
def exclusive_lock(lock_path: Any, *, lease_s: float = LOCK_LEASE_S) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block; wait while another process
    holds it.

    - Local filesystems: an advisory ``flock`` (released by the kernel if the holder dies).
    - S3 (``s3://``, ``s3a://``): a lock object created with a conditional PUT
      (``If-None-Match: *``), renewed every ``lease_s / 3`` seconds and deleted with
      ``If-Match`` on its ETag (:class:`S3Lock`); one abandoned for ``lease_s`` (its holder
      was killed) is taken over. Raises :class:`LockLostError` after the block if the lock
      was taken over while the block ran.
    - Other object stores (``memory://``, GCS, Azure ...): no lock (a no-op); one run per
      partition is then Dagster's guarantee alone.
    """
    if isinstance(lock_path, str) and "://" in lock_path:  # a URL, not a relative path
        lock_path = UPath(lock_path)
    if not is_local(lock_path):
        upath = lock_path if isinstance(lock_path, UPath) else UPath(lock_path)
        if upath.protocol not in S3_PROTOCOLS:
            yield
            return
        lock = S3Lock(upath, lease_s=lease_s)
        lock.acquire()
        try:
            yield
        finally:
            lost = lock.release()
        if lost:
            raise LockLostError(
                f"lock {lock_path} was taken over while held (not renewed for {lease_s:.0f} s): "
                "another writer may have written the same files; rerun the partition"
            )
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


def _s3_error_code(exc: BaseException) -> str:
    """The S3 error code behind an exception s3fs translated (``PreconditionFailed``,
    ``NoSuchKey`` ...), "" when there is none."""
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _lost_race(exc: BaseException) -> bool:
    """A conditional request that failed because someone else changed the object first:
    412 PreconditionFailed, or 409 ConditionalRequestConflict (two conditional writes at
    once: AWS asks to retry), or the object being gone."""
    if isinstance(exc, FileExistsError | FileNotFoundError):
        return True
    return _s3_error_code(exc) in (
        "PreconditionFailed",
        "412",
        "ConditionalRequestConflict",
        "409",
        "NoSuchKey",
        "404",
    )


class S3Lock:
    """An exclusive lock held as one object on S3, with a lease.

    Acquire: ``PUT`` the lock object with ``If-None-Match: *``: exactly one of several
    writers creates it, the others get 412 and wait (backoff up to 1 s). The object names
    its holder (metadata ``owner``: a random token, ``lease-s``; the body adds host and
    pid for people). A holder renews it every ``lease_s / 3`` on a daemon thread with a
    ``PUT`` ``If-Match`` its current ETag. A waiter that finds the object not renewed for
    longer than its lease (``LastModified`` against the ``Date`` of the same response: both
    the server's clock, so client clocks do not matter) replaces it with ``If-Match`` on
    the ETag it saw, so one waiter wins a takeover. Release: ``DELETE`` ``If-Match`` the
    holder's ETag, which never removes a lock someone else took over.

    Needs S3's conditional requests (AWS S3 since 2024, moto): a store that rejects them
    fails the first acquire loudly, but one that ignores the headers would let two
    writers in, so check an S3-compatible store first (tests/topology/test_topology.py).
    A request of the holder that s3fs retried after it had gone through (412 on its own
    ETag, 404 on its own delete) is recognised by the ``owner`` token and the lease.
    """

    def __init__(self, path: UPath, *, lease_s: float = LOCK_LEASE_S) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s!r}")
        self.path = path
        self.fs = path.fs
        self.bucket, self.key, _ = self.fs.split_path(path.path)
        self.lease_s = float(lease_s)
        self.owner = secrets.token_hex(16)
        self.etag: str | None = None
        self.renewed = 0.0  # time.monotonic() of the last write of the lock object
        self.waited_s = 0.0
        self.took_over = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # ----------------------------------------------------------------- requests
    def _put(self, **condition: str) -> str:
        sent = time.monotonic()
        body = canonical_json(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lease_s": self.lease_s,
                "renewed_utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        ).encode("utf-8")
        response = self.fs.call_s3(
            "put_object",
            Bucket=self.bucket,
            Key=self.key,
            Body=body,
            ContentType="application/json",
            Metadata={"owner": self.owner, "lease-s": repr(self.lease_s)},
            **condition,
        )
        self.renewed = sent
        return str(response["ETag"])

    def _head(self) -> Mapping[str, Any] | None:
        try:
            return self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None

    @staticmethod
    def _age_s(head: Mapping[str, Any]) -> float:
        """Seconds since the lock object was last written, by the server's clock."""
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return (now - head["LastModified"]).total_seconds()

    # ----------------------------------------------------------------- protocol
    def acquire(self) -> None:
        """Wait until this process holds the lock; start renewing it."""
        t0 = time.monotonic()
        delay = 0.05
        holder = ""
        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except OSError as exc:
                if not _lost_race(exc):
                    raise
            head = self._head()
            if head is None:  # released between our PUT and HEAD: ask again at once
                continue
            meta = head.get("Metadata", {})
            if meta.get("owner") == self.owner:  # our PUT landed; a retry of it got 412
                self.etag = str(head["ETag"])
                break
            holder = meta.get("owner", "?")[:8]
            lease = float(meta.get("lease-s", self.lease_s))
            age = self._age_s(head)
            if age > lease:
                try:
                    self.etag = self._put(IfMatch=str(head["ETag"]))
                except OSError as exc:
                    if not _lost_race(exc):
                        raise
                    continue  # another waiter took it over first
                self.took_over = True
                logger.warning(
                    "lock %s: took over from %s, not renewed for %.0f s (lease %.0f s)",
                    self.path,
                    holder,
                    age,
                    lease,
                )
                break
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
        self.waited_s = time.monotonic() - t0
        if self.waited_s >= 0.5:
            logger.info("lock %s: waited %.1f s for holder %s", self.path, self.waited_s, holder)
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"cohortflow-lock-{self.key[-20:]}", daemon=True
        )
        self._renewer.start()

    def _still_mine(self) -> bool:
        """After a 412: is the lock object still ours (a request of ours retried after it
        had gone through changed its ETag)? Adopts the current ETag if so."""
        head = self._head()
        if head is None or head.get("Metadata", {}).get("owner") != self.owner:
            return False
        self.etag = str(head["ETag"])
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.etag = self._put(IfMatch=str(self.etag))
            except OSError as exc:
                if _lost_race(exc) and not self._still_mine():
                    logger.error("lock %s: lost (taken over by another writer)", self.path)
                    self._lost.set()
                    return
                if not _lost_race(exc):
                    # a network hiccup: the lease still runs, try again next round
                    logger.warning("lock %s: could not renew (%s); retrying", self.path, exc)

    def release(self) -> bool:
        """Stop renewing and delete the lock object if it is still ours; True if the lock
        was lost while held."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._lost.is_set():
            return True
        for _ in range(3):
            try:
                self.fs.call_s3(
                    "delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag
                )
                return False
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) or _s3_error_code(exc) in (
                    "NoSuchKey",
                    "404",
                ):
                    # gone: within our lease only a retried DELETE of ours can have done it;
                    # past it, another writer may have taken over and released
                    return time.monotonic() - self.renewed > self.lease_s
                if _lost_race(exc):
                    if self._still_mine():
                        continue  # ours with another ETag: delete that one
                    logger.error("lock %s: lost before release (taken over)", self.path)
                    return True
                if _s3_error_code(exc) not in ("NotImplemented", "501", "InvalidArgument", "400"):
                    raise
                # a store without conditional deletes: delete only what still names us
                if not self._still_mine():
                    return True
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
                return False
        return True
