"""Whole-service counts for operators (the bot's /admin status, the reliability load benchmark).

Not user-scoped on purpose: only numbers leave here, never anyone's samples or labels."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import ACTIVE, FinetuneJob, Label, ModelVersion, Reading, Sample, User


def service_counts(session: Session) -> dict[str, int]:
    """users, readings, samples, labels (current), label_rows (with history), active_models,
    and finetune jobs per state (jobs_queued, jobs_running, jobs_succeeded, jobs_failed)."""
    def count(model: type, *where: object) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]

    counts = {
        "users": count(User), "readings": count(Reading), "samples": count(Sample),
        "labels": count(Label, Label.superseded_at.is_(None)), "label_rows": count(Label),
        "active_models": count(ModelVersion, ModelVersion.status == ACTIVE),
    }
    states = session.execute(select(FinetuneJob.state, func.count()).group_by(FinetuneJob.state)).all()
    by_state = {str(state): int(n) for state, n in states}
    for state in ("queued", "running", "succeeded", "failed"):
        counts[f"jobs_{state}"] = by_state.get(state, 0)
    return counts
