"""Where personal model weights live: a DB blob by default, files under ``weights_dir`` if set.

Files are written atomically (temporary file + fsync + rename). A file written in a transaction
that rolls back is removed; a file deleted by a transaction (forget, prune) is unlinked only after
that transaction commits, so the database and the directory never disagree for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

from storage.errors import CorruptWeights

_WRITTEN = "weights_files_written"
_TO_DELETE = "weights_files_to_delete"


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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".bin")
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
