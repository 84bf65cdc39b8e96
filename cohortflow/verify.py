"""``cohortflow verify``: recompute every attempt's manifest and every cohort's
``artifacts_manifest_sha256`` and name each file that is missing, changed or unexpected.

A sealed attempt folder's ``_COMPLETE`` records the sha256 of each artifact and each
cohort file (``metadata.json`` without its ``run`` key), so a change is named file by
file. Folders written by another system (no markers; every older layout) are checked
against their cohorts' ``snapshot.json`` (the manifest digest and, where recorded, the
artifact list). The asset check ``manifest_integrity`` runs the same :func:`verify_folder`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cohortflow.canonical import sha256_hex
from cohortflow.errors import ArtifactNotFoundError, CohortflowError
from cohortflow.formats import parse_json, read_json
from cohortflow.layout import (
    COMPLETE_MARKER,
    Scope,
    attempt_scopes,
    cohort_file,
    marker_file,
    walk_cohorts,
)
from cohortflow.snapshots import manifest_records, manifest_sha256, metadata_digest
from cohortflow.store import Store

MISSING, CHANGED, UNEXPECTED, MANIFEST, UNREADABLE, INCOMPLETE = (
    "missing",
    "changed",
    "unexpected",
    "manifest",
    "unreadable",
    "incomplete",
)


@dataclass(frozen=True)
class Problem:
    """One finding: its kind, the path relative to the root, and what was expected."""

    kind: str
    path: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


def verify_folder(store: Store, scope: Scope) -> list[Problem]:
    """Problems of one attempt folder ([] when everything matches; an incomplete folder
    yields one INCOMPLETE finding, not a failure of its files)."""
    folder = scope.attempt_dir(store.root)
    if not folder.exists():
        return [Problem(MISSING, store.rel(folder), "attempt folder")]
    return verify_container(store, folder)


def verify_container(store: Store, folder: Any) -> list[Problem]:
    """:func:`verify_folder` of any folder that holds cohort folders (any layout)."""
    rel = store.rel(folder)
    complete = marker_file(folder, COMPLETE_MARKER)
    if not complete.exists():
        if marker_file(folder, "_IN_PROGRESS").exists():
            return [Problem(INCOMPLETE, rel, "being written, or its run was killed")]
        return list(_verify_external(store, folder))
    try:
        seal = read_json(complete)
    except CohortflowError as exc:
        return [Problem(UNREADABLE, f"{rel}/{COMPLETE_MARKER}", str(exc))]
    return list(_verify_sealed(store, folder, seal))


def _verify_sealed(store: Store, folder: Any, seal: Mapping[str, Any]) -> Iterator[Problem]:
    rel = store.rel(folder)
    actual = {r.relpath: r for r in manifest_records(folder)}
    recorded = {a["relpath"]: a for a in seal.get("artifacts", ())}
    for path, want in sorted(recorded.items()):
        got = actual.get(path)
        if got is None:
            yield Problem(MISSING, f"{rel}/{path}", f"sha256 {want['sha256'][:12]}")
        elif got.sha256 != want["sha256"] or got.size != want["size"]:
            yield Problem(
                CHANGED, f"{rel}/{path}", f"sha256 {got.sha256[:12]}, sealed {want['sha256'][:12]}"
            )
    if recorded:
        for path in sorted(set(actual) - set(recorded)):
            yield Problem(UNEXPECTED, f"{rel}/{path}", "not in the seal")
    digest = manifest_sha256(list(actual.values()))
    # a seal from before per-file records: only the digest can tell
    if seal.get("artifacts_manifest_sha256") != digest and not recorded:
        yield Problem(
            MANIFEST,
            rel,
            f"artifacts manifest {str(digest)[:12]} != sealed "
            f"{str(seal.get('artifacts_manifest_sha256'))[:12]}",
        )
    cohorts = seal.get("cohorts") or {}
    if isinstance(cohorts, Mapping):
        yield from _verify_cohort_files(store, folder, cohorts)
    yield from _verify_snapshots(store, folder, digest)


def _verify_cohort_files(
    store: Store, folder: Any, cohorts: Mapping[str, Mapping[str, str]]
) -> Iterator[Problem]:
    on_disk = {p.name.removeprefix("cohort="): p for p in _cohort_dirs(folder)}
    for cid in sorted(set(on_disk) - set(cohorts)):
        yield Problem(UNEXPECTED, store.rel(on_disk[cid]), "cohort not in the seal")
    for cid, files in sorted(cohorts.items()):
        present = {p.name: p for p in _children(on_disk[cid])} if cid in on_disk else {}
        for name, want in sorted(files.items()):
            path = present.get(name)
            if path is None:
                yield Problem(
                    MISSING, f"{store.rel(folder)}/cohort={cid}/{name}", f"sha256 {want[:12]}"
                )
                continue
            data = path.read_bytes()
            try:
                got = (
                    metadata_digest(parse_json(path, data))
                    if name == "metadata.json"
                    else sha256_hex(data)
                )
            except CohortflowError as exc:
                yield Problem(CHANGED, store.rel(path), str(exc))
                continue
            if got != want:
                yield Problem(CHANGED, store.rel(path), f"sha256 {got[:12]}, sealed {want[:12]}")
        for name in sorted(set(present) - set(files)):
            yield Problem(UNEXPECTED, store.rel(present[name]), "not in the seal")


def _verify_snapshots(store: Store, folder: Any, digest: str | None) -> Iterator[Problem]:
    """Each cohort's snapshot.json names the manifest of the files beside it."""
    for cohort in _cohort_dirs(folder):
        path = cohort_file(cohort, "snapshot.json")
        try:
            snapshot = read_json(path)
        except ArtifactNotFoundError:
            continue  # named by the seal check, or an older cohort without one
        except CohortflowError as exc:
            yield Problem(UNREADABLE, store.rel(path), str(exc))
            continue
        recorded = snapshot.get("artifacts_manifest_sha256")
        if recorded is not None and recorded != digest:
            yield Problem(
                MANIFEST,
                store.rel(path),
                f"artifacts_manifest_sha256 {str(recorded)[:12]} != files {str(digest)[:12]}",
            )


def _verify_external(store: Store, folder: Any) -> Iterator[Problem]:
    """A folder without markers: check what its snapshots recorded."""
    rel = store.rel(folder)
    actual = {r.relpath: r for r in manifest_records(folder)}
    digest = manifest_sha256(list(actual.values()))
    for cohort in _cohort_dirs(folder):
        path = cohort_file(cohort, "snapshot.json")
        try:
            snapshot = read_json(path)
        except ArtifactNotFoundError:
            continue
        except CohortflowError as exc:
            yield Problem(UNREADABLE, store.rel(path), str(exc))
            continue
        listed = {
            a["relpath"]: a for a in snapshot.get("artifacts") or () if isinstance(a, Mapping)
        }
        for relpath, want in sorted(listed.items()):
            got = actual.get(relpath)
            if got is None:
                yield Problem(MISSING, f"{rel}/{relpath}", "listed in snapshot.json")
            elif got.sha256 != want.get("sha256"):
                yield Problem(CHANGED, f"{rel}/{relpath}", "differs from snapshot.json")
        recorded = snapshot.get("artifacts_manifest_sha256")
        if recorded is not None and recorded != digest and not listed:
            yield Problem(
                MANIFEST,
                store.rel(path),
                f"artifacts_manifest_sha256 {str(recorded)[:12]} != files {str(digest)[:12]}",
            )


def _children(folder: Any) -> list[Any]:
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _cohort_dirs(folder: Any) -> list[Any]:
    return [p for p in _children(folder) if p.name.startswith("cohort=") and p.is_dir()]


@dataclass
class VerifyReport:
    folders: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def failed(self) -> list[Problem]:
        return [p for p in self.problems if p.kind != INCOMPLETE]


def verify_root(root: Any, batch: str | None = None) -> VerifyReport:
    """Every attempt folder under ``root`` (of one batch), in every layout, with what is
    off in each."""
    store = Store(root)
    containers = {
        scope.attempt_relpath(): scope.attempt_dir(store.root)
        for scope in attempt_scopes(store.root, batch)
    }
    for record in walk_cohorts(store.root, include_incomplete=True):
        if batch is None or record.batch == batch:
            containers.setdefault(record.container_path(), record.dir(store.root).parent)
    report = VerifyReport()
    for _, folder in sorted(containers.items()):
        report.folders += 1
        report.problems += verify_container(store, folder)
    return report


__all__ = ["Problem", "VerifyReport", "verify_container", "verify_folder", "verify_root"]
