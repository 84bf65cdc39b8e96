"""The cohort index under the output root, so listings and lookups never walk the tree.

Local roots keep a SQLite file at ``_index/cohorts.sqlite`` (WAL journal, busy timeout,
retries: several processes may add at once). Other roots (object storage, ``memory://``)
keep a JSON-lines file ``_index/cohorts.jsonl`` that is read and rewritten whole, each
rewrite under the index's lock (``_locks/index.lock``: a lease object on S3, see
:func:`cohortflow.fsio.exclusive_lock`), so cluster workers adding at once lose no row.

The index can always be rebuilt from the tree (:meth:`CohortIndex.rebuild`); it lists
complete cohorts by default, like :func:`cohortflow.layout.walk_cohorts`.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from cohortflow.canonical import canonical_json
from cohortflow.errors import ArtifactNotFoundError, StoreError
from cohortflow.fsio import atomic_write_text, exclusive_lock, is_local, local_path, quarantine
from cohortflow.layout import (
    LAYOUT_CURRENT,
    LAYOUTS,
    STAGES,
    VIEWS,
    CohortRecord,
    as_root,
    index_path,
    is_readable,
    lock_path,
    newest_first_key,
    parse_cohort_path,
    sort_key,
    validate_cohort_id,
    walk_cohorts,
)

logger = logging.getLogger(__name__)

SQLITE_NAME = "cohorts.sqlite"
JSONL_NAME = "cohorts.jsonl"
SCHEMA_VERSION = 2  # 2: origin (cohortflow | external)

_FIELDS = (
    "cohort_id",
    "path",
    "target",
    "stage",
    "view",
    "batch",
    "universe_sig",
    "symbol",
    "attempt",
    "layout",
    "complete",
    "origin",
)
_FILTERS = ("target", "stage", "view", "batch", "attempt", "symbol")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cohorts (
    cohort_id TEXT NOT NULL,
    path TEXT NOT NULL,
    target TEXT NOT NULL,
    stage TEXT NOT NULL,
    view TEXT NOT NULL,
    batch TEXT,
    universe_sig TEXT,
    symbol TEXT,
    attempt INTEGER NOT NULL,
    layout TEXT NOT NULL,
    complete INTEGER NOT NULL,
    origin TEXT NOT NULL DEFAULT 'cohortflow',
    summary TEXT,
    PRIMARY KEY (cohort_id, path)
);
CREATE INDEX IF NOT EXISTS cohorts_by_id ON cohorts (cohort_id);
CREATE INDEX IF NOT EXISTS cohorts_by_scope ON cohorts (
    target, stage, view, batch, attempt, complete, symbol, cohort_id, universe_sig, layout, path
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

T = TypeVar("T")

# what SQLite says of a file that is not (or no longer) a database it can read
_CORRUPT = ("not a database", "malformed", "encrypted", "unsupported file format")


class IndexUnusable(StoreError):
    """The index file is damaged or from another schema: it is set aside and rebuilt from
    the tree, which is the truth (the index is only a cache of it)."""


def _unusable(exc: sqlite3.DatabaseError) -> bool:
    return any(word in str(exc).lower() for word in _CORRUPT)


def _rank(column: str, order: tuple[str, ...]) -> str:
    cases = " ".join(f"WHEN '{value}' THEN {i}" for i, value in enumerate(order))
    return f"CASE {column} {cases} ELSE {len(order)} END"


# cohortflow.layout.sort_key in SQL (names are ASCII, so SQLite's byte order is Python's);
# sorting in SQLite keeps a 10,000-cohort listing well inside its time budget
_ORDER_BY = (
    f" ORDER BY target, {_rank('stage', STAGES)}, stage, {_rank('view', VIEWS)}, "
    "COALESCE(symbol, ''), COALESCE(batch, ''), attempt DESC, cohort_id, "
    f"{_rank('layout', LAYOUTS)}, path"
)

Item = CohortRecord | tuple[CohortRecord, Mapping[str, Any] | None]


def _row(record: CohortRecord, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    row = record.to_dict()
    row["complete"] = int(bool(record.complete))
    row["summary"] = None if summary is None else canonical_json(summary, compact=True)
    return row


def _record(row: Mapping[str, Any]) -> CohortRecord:
    return CohortRecord.from_dict(row)


def _items(items: Iterable[Item]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        record, summary = item if isinstance(item, tuple) else (item, None)
        if not isinstance(record, CohortRecord):
            raise TypeError(f"expected a CohortRecord, got {type(record).__name__}")
        rows.append(_row(record, summary))
    return rows


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any], include_incomplete: bool) -> bool:
    if not include_incomplete and not row["complete"]:
        return False
    return all(row[key] == value for key, value in filters.items())


class _Sqlite:
    """SQLite backend: one short connection per operation, so processes never hold locks."""

    def __init__(self, path: Any, timeout_s: float) -> None:
        self.path = local_path(path)
        self.timeout_s = timeout_s

    def exists(self) -> bool:
        return self.path.is_file()

    def _retry(self, fn: Callable[[], T]) -> T:
        # The busy timeout covers most contention; switching to WAL and some schema steps can
        # still report "locked" at once, so retry with backoff until the timeout is spent.
        deadline = time.monotonic() + self.timeout_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                message = str(exc).lower()
                if "locked" not in message and "busy" not in message:
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"cohort index {self.path} stayed locked: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _connect(self, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            if create:
                self._retry(lambda: con.execute("PRAGMA journal_mode = WAL").fetchone())
                # NORMAL is safe against a killed process under WAL; the index is rebuildable
                # from the tree, so a power cut losing the last adds costs only a rebuild.
                con.execute("PRAGMA synchronous = NORMAL")
                self._retry(lambda: self._create_schema(con))
        except BaseException:
            con.close()
            raise
        return con

    @staticmethod
    def _create_schema(con: sqlite3.Connection) -> None:
        exists = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cohorts'"
        ).fetchone()
        if exists:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or str(row[0]) != str(SCHEMA_VERSION):
                raise IndexUnusable(f"schema {row[0] if row else '?'}, expected {SCHEMA_VERSION}")
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            # one statement at a time: executescript would commit the open transaction
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return self._write_unguarded(body)
        except sqlite3.DatabaseError as exc:
            if _unusable(exc):
                raise IndexUnusable(str(exc)) from exc
            raise

    def _write_unguarded(self, body: Callable[[sqlite3.Connection], T]) -> T:
        con = self._connect(create=True)
        try:

            def transaction() -> T:
                con.execute("BEGIN IMMEDIATE")
                try:
                    result = body(con)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
                return result

            return self._retry(transaction)
        finally:
            con.close()

    def _read(self, sql: str, params: Iterable[Any], named: bool = True) -> list[Any]:
        try:
            return self._read_unguarded(sql, params, named)
        except sqlite3.DatabaseError as exc:
            if _unusable(exc):
                raise IndexUnusable(str(exc)) from exc
            raise

    def _read_unguarded(self, sql: str, params: Iterable[Any], named: bool = True) -> list[Any]:
        if not self.exists():
            return []
        con = self._connect(create=False)
        con.execute("PRAGMA temp_store = MEMORY")  # ORDER BY sorts in memory, never a temp file
        if not named:
            con.row_factory = None  # plain tuples: a third faster on long listings
        try:
            return self._retry(lambda: con.execute(sql, tuple(params)).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # another process is creating the index right now
                return []
            raise
        finally:
            con.close()

    _UPSERT = (
        f"INSERT INTO cohorts ({', '.join(_FIELDS)}, summary) "
        f"VALUES ({', '.join(':' + f for f in _FIELDS)}, :summary) "
        "ON CONFLICT (cohort_id, path) DO UPDATE SET "
        + ", ".join(f"{f} = excluded.{f}" for f in _FIELDS[2:])
        + ", summary = COALESCE(excluded.summary, cohorts.summary)"
    )

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        self._write(lambda con: con.executemany(self._UPSERT, rows))

    def delete(self, filters: Mapping[str, Any]) -> int:
        where, params = _where(filters)
        return self._write(lambda con: con.execute(f"DELETE FROM cohorts{where}", params).rowcount)

    def delete_rows(self, keys: list[tuple[str, str]]) -> None:
        self._write(
            lambda con: con.executemany(
                "DELETE FROM cohorts WHERE cohort_id = ? AND path = ?", keys
            )
        )

    def query(self, filters: Mapping[str, Any], include_incomplete: bool) -> list[dict[str, Any]]:
        where, params = _where(filters, include_incomplete)
        return [dict(r) for r in self._read(f"SELECT * FROM cohorts{where}", params)]

    _RECORD_COLUMNS = (
        "cohort_id, target, stage, view, batch, universe_sig, symbol, attempt, layout, path, "
        "complete, origin"
    )

    def records(self, filters: Mapping[str, Any], include_incomplete: bool) -> list[CohortRecord]:
        """Matching records in :func:`cohortflow.layout.sort_key` order."""
        # the listing hot path: positional columns straight into records, no summaries; the
        # scope index holds every column here, so a listing never touches the table itself
        where, params = _where(filters, include_incomplete)
        sql = f"SELECT {self._RECORD_COLUMNS} FROM cohorts{where}{_ORDER_BY}"
        rows = self._read(sql, params, False)
        return [CohortRecord(*r[:10], bool(r[10]), r[11]) for r in rows]

    def replace_all(self, rows: list[dict[str, Any]], keep: Callable[[dict], bool]) -> int:
        def body(con: sqlite3.Connection) -> int:
            fresh = {(r["cohort_id"], r["path"]) for r in rows}
            old = [dict(r) for r in con.execute("SELECT * FROM cohorts").fetchall()]
            summaries = {(r["cohort_id"], r["path"]): r["summary"] for r in old}
            kept = [r for r in old if (r["cohort_id"], r["path"]) not in fresh and keep(r)]
            for r in rows:
                if r["summary"] is None:
                    r["summary"] = summaries.get((r["cohort_id"], r["path"]))
            con.execute("DELETE FROM cohorts")
            con.executemany(self._UPSERT, [*rows, *kept])
            return len(rows) + len(kept)

        return self._write(body)


def _where(filters: Mapping[str, Any], include_incomplete: bool = True) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for key, value in filters.items():
        clauses.append(f"{key} = ?")
        params.append(value)
    if not include_incomplete:
        clauses.append("complete = 1")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _under_lock(method: Callable[..., T]) -> Callable[..., T]:
    """A read-modify-write of the JSON-lines file, under the index's lock."""

    @functools.wraps(method)
    def locked(self: _Jsonl, *args: Any) -> T:
        with exclusive_lock(self.lock):
            return method(self, *args)

    return locked


class _Jsonl:
    """JSON-lines backend for object storage: read whole, rewritten whole, each
    read-modify-write under ``lock`` (where the store can lock: S3)."""

    def __init__(self, path: Any, lock: Any) -> None:
        self.path = path
        self.lock = lock

    def exists(self) -> bool:
        return self.path.exists()

    def _load(self) -> dict[tuple[str, str], dict[str, Any]]:
        if not self.exists():
            return {}
        rows = {}
        try:
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[(row["cohort_id"], row["path"])] = row
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexUnusable(f"{self.path}: {exc}") from exc
        return rows

    def _save(self, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
        ordered = sorted(rows.values(), key=lambda r: sort_key(_record(r)))
        atomic_write_text(
            self.path, "".join(canonical_json(r, compact=True) + "\n" for r in ordered)
        )

    @_under_lock
    def upsert(self, rows: list[dict[str, Any]]) -> None:
        current = self._load()
        for row in rows:
            key = (row["cohort_id"], row["path"])
            if row["summary"] is None and key in current:
                row = {**row, "summary": current[key].get("summary")}
            current[key] = row
        self._save(current)

    @_under_lock
    def delete_rows(self, keys: list[tuple[str, str]]) -> None:
        current = self._load()
        for key in keys:
            current.pop(tuple(key), None)
        self._save(current)

    @_under_lock
    def delete(self, filters: Mapping[str, Any]) -> int:
        current = self._load()
        gone = [k for k, r in current.items() if _matches(r, filters, True)]
        for key in gone:
            del current[key]
        self._save(current)
        return len(gone)

    def query(self, filters: Mapping[str, Any], include_incomplete: bool) -> list[dict[str, Any]]:
        return [r for r in self._load().values() if _matches(r, filters, include_incomplete)]

    def records(self, filters: Mapping[str, Any], include_incomplete: bool) -> list[CohortRecord]:
        """Matching records in :func:`cohortflow.layout.sort_key` order."""
        return sorted((_record(r) for r in self.query(filters, include_incomplete)), key=sort_key)

    @_under_lock
    def replace_all(self, rows: list[dict[str, Any]], keep: Callable[[dict], bool]) -> int:
        old = self._load()
        new = {(r["cohort_id"], r["path"]): r for r in rows}
        for key, row in new.items():
            if row["summary"] is None and key in old:
                row["summary"] = old[key].get("summary")
        for key, row in old.items():
            if key not in new and keep(row):
                new[key] = row
        self._save(new)
        return len(new)


class CohortIndex:
    """The cohort index of the output root ``root`` (Path or UPath): a cache of the tree.

    The tree (its cohort folders and attempt markers) is the truth. An index file that
    is damaged or from another schema is set aside (``cohorts.sqlite.corrupt-…``) and
    rebuilt from the tree; lookups check the disk before trusting a row. Usable as a
    context manager (it holds no open handles between calls). Reading a root without an
    index returns nothing and creates nothing; the first write creates ``_index/``.
    """

    def __init__(self, root: Any, *, timeout_s: float = 30.0) -> None:
        self.root = as_root(root)
        if is_local(self.root):
            self.path = index_path(self.root, SQLITE_NAME)
            self._backend: _Sqlite | _Jsonl = _Sqlite(self.path, timeout_s)
        else:
            self.path = index_path(self.root, JSONL_NAME)
            self._backend = _Jsonl(self.path, lock_path(self.root, "index"))

    def __enter__(self) -> CohortIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own connection."""

    def exists(self) -> bool:
        """True once the index file exists under the root."""
        return self._backend.exists()

    def _guarded(self, op: Callable[[], T]) -> T:
        """Run ``op``; if the index file is unusable, set it aside, rebuild, run again."""
        try:
            return op()
        except IndexUnusable as exc:
            self._set_aside(exc)
            self._rebuild()
            return op()

    def _set_aside(self, exc: Exception) -> None:
        moved = quarantine(self.path)
        logger.warning(
            "cohort index %s is unusable (%s); kept as %s and rebuilt from the tree",
            self.path,
            exc,
            moved,
        )

    def add(self, record: CohortRecord, summary: Mapping[str, Any] | None = None) -> None:
        """Insert or update one cohort (keyed by cohort id and path).

        ``summary`` (key metrics, fingerprints ...) is stored as canonical JSON; adding a
        record again without a summary keeps the one stored before.
        """
        self.add_many([(record, summary)])

    def add_many(self, items: Iterable[Item]) -> int:
        """Insert or update many cohorts in one transaction; returns how many."""
        rows = _items(items)
        if rows:
            self._guarded(lambda: self._backend.upsert(rows))
        return len(rows)

    def remove_attempt(
        self,
        target: str,
        stage: str,
        view: str,
        batch: str,
        attempt: int,
        symbol: str | None = None,
    ) -> int:
        """Drop every cohort of one attempt folder from the index (not from the tree)."""
        filters: dict[str, Any] = {
            "target": target,
            "stage": stage,
            "view": view,
            "batch": batch,
            "attempt": int(attempt),
            "layout": LAYOUT_CURRENT,
        }
        if symbol is not None:
            filters["symbol"] = symbol
        return self._guarded(lambda: self._backend.delete(filters))

    def get(self, cohort_id: str, *, include_incomplete: bool = False) -> CohortRecord | None:
        """The record of ``cohort_id``; the newest attempt if it is in several. None if absent."""
        records = self._guarded(
            lambda: self._backend.records({"cohort_id": cohort_id}, include_incomplete)
        )
        return min(records, key=newest_first_key) if records else None

    def summary(self, cohort_id: str, path: str | None = None) -> dict[str, Any] | None:
        """The summary stored with ``cohort_id`` (at ``path``, or of its newest record)."""
        filters = (
            {"cohort_id": cohort_id} if path is None else {"cohort_id": cohort_id, "path": path}
        )
        rows = self._guarded(lambda: self._backend.query(filters, include_incomplete=True))
        if not rows:
            return None
        row = min(rows, key=lambda r: newest_first_key(_record(r)))
        return None if row.get("summary") is None else json.loads(row["summary"])

    def list(
        self,
        target: str | None = None,
        stage: str | None = None,
        view: str | None = None,
        batch: str | None = None,
        attempt: int | None = None,
        symbol: str | None = None,
        *,
        include_incomplete: bool = False,
        check_disk: bool = False,
    ) -> builtins.list[CohortRecord]:
        """Cohorts matching every given filter, in :func:`cohortflow.layout.sort_key` order.

        ``check_disk``: keep only rows whose folder is on disk in a complete attempt now
        (one check per attempt folder), and drop the others from the index; what a person
        is shown is always what the disk holds.
        """
        values = (target, stage, view, batch, attempt, symbol)
        filters = {k: v for k, v in zip(_FILTERS, values, strict=True) if v is not None}
        if "attempt" in filters:
            filters["attempt"] = int(filters["attempt"])
        records = self._guarded(lambda: self._backend.records(filters, include_incomplete))
        if not check_disk:
            return records
        return self._on_disk(records, include_incomplete)

    def _on_disk(
        self, records: builtins.list[CohortRecord], include_incomplete: bool
    ) -> builtins.list[CohortRecord]:
        from cohortflow.layout import folder_state

        states: dict[str, tuple[bool, str]] = {}
        kept, gone = [], []
        for record in records:
            folder = record.dir(self.root)
            container = record.container_path()
            if container not in states:
                states[container] = folder_state(folder.parent)
            complete, origin = states[container]
            if not folder.exists() or (not complete and not include_incomplete):
                gone.append(record)
                continue
            kept.append(
                record
                if (record.complete, record.origin) == (complete, origin)
                else CohortRecord(**{**record.to_dict(), "complete": complete, "origin": origin})
            )
        if gone:
            logger.info("cohort index %s: %d stale rows dropped", self.path, len(gone))
            self._guarded(lambda: self._backend.delete_rows([(r.cohort_id, r.path) for r in gone]))
        return kept

    def rebuild(self, problems: builtins.list[str] | None = None) -> int:
        """Replace the contents with a walk of the tree (complete cohorts); returns the count.

        Survives any index file: one that cannot be read is set aside first. The
        replacement is one transaction, so readers see the old index or the new one.
        Rows added while the walk ran are kept if their folder exists and is complete, and
        stored summaries survive for cohorts that are still there. ``problems``: gets one
        line per cohort left out because its metadata.json is malformed.
        """
        found: builtins.list[str] = []
        try:
            count = self._rebuild(found)
        except IndexUnusable as exc:
            self._set_aside(exc)
            found.clear()
            count = self._rebuild(found)
        if problems is not None:
            problems.extend(found)
        return count

    def _rebuild(self, problems: builtins.list[str] | None = None) -> int:
        t0 = time.monotonic()
        rows = [_row(r, None) for r in walk_cohorts(self.root, problems=problems)]
        count = self._backend.replace_all(rows, self._still_there)
        logger.info(
            "rebuilt cohort index %s: %d cohorts in %.1f s", self.path, count, time.monotonic() - t0
        )
        return count

    def _still_there(self, row: Mapping[str, Any]) -> bool:
        record = parse_cohort_path(self.root, row["path"])
        return record is not None and record.complete and record.dir(self.root).exists()


def find_cohort(root: Any, cohort_id: str) -> CohortRecord:
    """The newest complete record of ``cohort_id``: from the index when its row is still
    true on disk, else by walking the tree (a stale index slows a lookup down but never
    hides a cohort, nor shows one that is gone)."""
    root = as_root(root)
    cid = validate_cohort_id(cohort_id)
    index = CohortIndex(root)
    indexed = index.exists()
    record = index.get(cid) if indexed else None
    if record is not None and is_readable(root, record):
        return record
    if indexed:
        logger.info("cohort %s not (or no longer) in the index under %s; walking", cid, root)
    matches = [r for r in walk_cohorts(root) if r.cohort_id == cid]
    if not matches:
        where = "the index and the tree" if indexed else "the tree (no index)"
        raise ArtifactNotFoundError(f"cohort {cid!r} not found under {root}; searched {where}")
    return min(matches, key=newest_first_key)
