"""Where personal model weights live: a DB blob by default, files under ``weights_dir`` if set.

Files are written atomically (temporary file + fsync + rename). A file written in a transaction
that rolls back is removed; a file deleted by a transaction (forget, prune) is unlinked only after
that transaction commits, so the database and the directory never disagree for long.

A process killed between writing a file and committing its row (or between a commit and the
unlink) leaves a file no row refers to; ``stale_files`` + ``remove_files`` (driven by
``storage.repository.sweep_orphan_weights``, from the worker's sweep) delete such files once they
are older than a grace period, so a file being written right now is never taken for an orphan.
Only names in this module's layout are considered, never anything else in the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

from storage.errors import CorruptWeights

_WRITTEN = "weights_files_written"
_TO_DELETE = "weights_files_to_delete"
# <user row id>/<sha256 prefix>-<uuid>.bin, and mkstemp's temporary files beside them.
_USER_DIR = re.compile(r"[0-9]+")
_WEIGHTS_FILE = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}\.bin|\.tmp-[A-Za-z0-9_]+\.bin")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_dir_of(session: Session) -> Path | None:
    value = session.info.get("weights_dir")
    return Path(value) if value else None


def write_file(session: Session, *, user_id: int, data: bytes) -> str:
    """Write ``data`` under the session's weights_dir; returns the path relative to it."""
    root = weights_dir_of(session)
    if root is None:
        raise RuntimeError("no weights_dir configured for this session")
    relative = f"{user_id}/{sha256_hex(data)[:16]}-{uuid.uuid4().hex[:12]}.bin"
    target = root / relative
    for attempt in range(3):  # the orphan sweep may remove an old empty folder in between
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".bin")
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    session.info.setdefault(_WRITTEN, []).append(target)
    return relative


def read_file(session: Session, *, relative: str, sha256: str) -> bytes:
    root = weights_dir_of(session)
    if root is None:
        raise CorruptWeights(f"weights stored as file {relative!r} but no weights_dir is configured")
    try:
        data = (root / relative).read_bytes()
    except FileNotFoundError as error:
        raise CorruptWeights(f"weights file {relative!r} is missing") from error
    if sha256_hex(data) != sha256:
        raise CorruptWeights(f"weights file {relative!r} does not match its checksum")
    return data


def delete_after_commit(session: Session, relative_paths: list[str]) -> None:
    root = weights_dir_of(session)
    if root is not None:
        session.info.setdefault(_TO_DELETE, []).extend(root / p for p in relative_paths)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    session.info.pop(_WRITTEN, None)
    for path in session.info.pop(_TO_DELETE, []):
        path.unlink(missing_ok=True)
        _remove_empty_dir(path.parent)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_TO_DELETE, None)
    for path in session.info.pop(_WRITTEN, []):
        path.unlink(missing_ok=True)


def _remove_empty_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def stale_files(root: Path, *, modified_before: float) -> list[str]:
    """Weights and temporary files (relative paths) under ``root`` last modified before
    ``modified_before`` (a ``time.time()``); files and folders outside the layout are ignored."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for user_dir in root.iterdir():
        if not _USER_DIR.fullmatch(user_dir.name) or user_dir.is_symlink() or not user_dir.is_dir():
            continue
        for entry in user_dir.iterdir():
            if not _WEIGHTS_FILE.fullmatch(entry.name) or entry.is_symlink():
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (forget, rollback)
                if entry.is_file() and entry.stat().st_mtime < modified_before:
                    found.append(f"{user_dir.name}/{entry.name}")
    return found


def remove_files(root: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        (root / relative).unlink(missing_ok=True)


def remove_empty_dirs(root: Path, *, modified_before: float) -> int:
    """Remove empty user folders last modified before ``modified_before`` (a folder just created
    for a file about to be written is newer; one emptied by this sweep goes at a later one)."""
    removed = 0
    if not root.is_dir():
        return removed
    for user_dir in root.iterdir():
        if not _USER_DIR.fullmatch(user_dir.name) or user_dir.is_symlink():
            continue
        with contextlib.suppress(OSError):  # not empty, not a folder, or gone
            if user_dir.stat().st_mtime < modified_before:
                user_dir.rmdir()
                removed += 1
    return removed
