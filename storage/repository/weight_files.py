"""Weight files no model row refers to (a process killed between writing a file and committing its
row, or between a commit and the unlink that followed it): found and deleted after a grace period."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import weights as weight_store
from storage.models import ModelVersion

_CHUNK = 500  # paths per IN (...) query


def sweep_orphan_weights(session: Session, *, grace_s: float, now: float | None = None) -> list[str]:
    """Delete weight files (and temporary files) under the session's ``weights_dir`` that are older
    than ``grace_s`` seconds and that no model version row refers to; returns their relative paths.

    The directory is listed *before* the rows are read, so a row committed meanwhile is seen; a file
    younger than the grace period (being written, its row not committed yet) is never touched.
    Nothing in the database changes. Empty user folders older than the grace period go too."""
    root = weight_store.weights_dir_of(session)
    if root is None:
        return []
    cutoff = (time.time() if now is None else now) - grace_s
    candidates = weight_store.stale_files(root, modified_before=cutoff)
    referenced: set[str] = set()
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start:start + _CHUNK]
        referenced.update(p for p in session.scalars(
            select(ModelVersion.weights_path).where(ModelVersion.weights_path.in_(chunk))) if p)
    orphans = [path for path in candidates if path not in referenced]
    weight_store.remove_files(root, orphans)
    weight_store.remove_empty_dirs(root, modified_before=cutoff)
    return orphans
