"""Personal model versions: stored, promoted (the previous one retired), rejected, loaded."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage import weights as weight_store
from storage.errors import CorruptWeights, InvalidTransition, UnknownModelVersion
from storage.models import ACTIVE, CANDIDATE, REJECTED, RETIRED, ModelVersion, utcnow
from storage.repository._common import lock_user


def add_model_version(
    session: Session, *, user_id: int, parent_id: int | None, weights: bytes, metrics: dict[str, Any],
    status: str = CANDIDATE,
) -> ModelVersion:
    """Store a new personal model (version numbers 1, 2, ... per user). The bytes go to the DB,
    or to a file under the session's ``weights_dir`` when one is configured. ``status`` may be
    "candidate" or "rejected"; promotion goes through :func:`promote_model_version`."""
    if status not in (CANDIDATE, REJECTED):
        raise InvalidTransition(f"a new model version is 'candidate' or 'rejected', not {status!r}")
    if lock_user(session, user_id) is None:
        raise UnknownModelVersion(f"no user {user_id}")
    if parent_id is not None:
        _version_of(session, user_id=user_id, version_id=parent_id)
    number = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.user_id == user_id))
              or 0) + 1
    digest = weight_store.sha256_hex(weights)
    in_files = weight_store.weights_dir_of(session) is not None
    version = ModelVersion(
        user_id=user_id, version=number, parent_id=parent_id, status=status,
        weights=None if in_files else bytes(weights),
        weights_path=weight_store.write_file(session, user_id=user_id, data=weights) if in_files else None,
        weights_size=len(weights), weights_sha256=digest, metrics=dict(metrics), created_at=utcnow(),
    )
    session.add(version)
    session.flush()
    return version


def _version_of(session: Session, *, user_id: int, version_id: int, lock: bool = False) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.id == version_id, ModelVersion.user_id == user_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    version = session.scalars(query).one_or_none()
    if version is None:
        raise UnknownModelVersion(f"user {user_id} has no model version {version_id}")
    return version


def promote_model_version(session: Session, *, user_id: int, version_id: int) -> ModelVersion:
    """Make this version the user's active model; the previous active one becomes "retired" (kept
    for rollback). A retired version may be promoted again (rollback); a rejected one may not.
    Per-user writes are serialised (row lock / SQLite write lock) and a partial unique index makes
    two active versions impossible even so."""
    if lock_user(session, user_id) is None:
        raise UnknownModelVersion(f"no user {user_id}")
    version = _version_of(session, user_id=user_id, version_id=version_id, lock=True)
    if version.status == ACTIVE:
        return version
    if version.status not in (CANDIDATE, RETIRED):
        raise InvalidTransition(f"model version {version_id} is {version.status}; it cannot be promoted")
    now = utcnow()
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.user_id == user_id, ModelVersion.status == ACTIVE)
        .values(status=RETIRED, retired_at=now)
        .execution_options(synchronize_session="fetch")
    )
    version.status, version.promoted_at, version.retired_at = ACTIVE, now, None
    session.flush()
    return version


def retire_active_model(session: Session, *, user_id: int) -> ModelVersion | None:
    """Go back to the base model: the active version (if any) becomes retired; returns it."""
    lock_user(session, user_id)
    active = active_model_version(session, user_id=user_id)
    if active is not None:
        active.status, active.retired_at = RETIRED, utcnow()
        session.flush()
    return active


def reject_model_version(session: Session, *, user_id: int, version_id: int, reason: str) -> ModelVersion:
    """Mark a candidate as rejected (it did not beat the current model), keeping why."""
    version = _version_of(session, user_id=user_id, version_id=version_id, lock=True)
    if version.status not in (CANDIDATE, REJECTED):
        raise InvalidTransition(f"model version {version_id} is {version.status}; only candidates are rejected")
    version.status, version.status_reason = REJECTED, reason
    session.flush()
    return version


def active_model_version(session: Session, *, user_id: int) -> ModelVersion | None:
    """The user's active personal model (weights not loaded; see :func:`load_weights`), or None."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.user_id == user_id, ModelVersion.status == ACTIVE)
    ).one_or_none()


def model_versions(session: Session, *, user_id: int) -> list[ModelVersion]:
    """All of a user's model versions, oldest first (weights not loaded)."""
    return list(session.scalars(select(ModelVersion).where(ModelVersion.user_id == user_id)
                                .order_by(ModelVersion.version)))


def load_weights(session: Session, *, user_id: int, version_id: int) -> bytes:
    """The stored weight bytes of a version, checked against their sha256 (CorruptWeights if not)."""
    version = _version_of(session, user_id=user_id, version_id=version_id)
    if version.weights_path is not None:
        return weight_store.read_file(session, relative=version.weights_path, sha256=version.weights_sha256)
    data = session.scalar(select(ModelVersion.weights).where(ModelVersion.id == version.id))
    if data is None or weight_store.sha256_hex(data) != version.weights_sha256:
        raise CorruptWeights(f"model version {version_id} weights do not match their checksum")
    return bytes(data)
