"""A user's statistics: how often the answers were right, per digit, over time, per model."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Select, String, case, cast, func, select, type_coerce
from sqlalchemy.orm import Session

from storage.models import Label
from storage.records import DigitStats, ModelVersionInfo, TimeBucket, UserStats
from storage.repository._common import user_id_for
from storage.repository.model_versions import model_versions
from storage.repository.readings import count_samples

LAST_N = 50


def _empty(samples: int = 0, models: list[ModelVersionInfo] | None = None) -> UserStats:
    return UserStats(
        labelled=0, correct=0, base_correct=0, last50_count=0, last50_correct=0, last50_base_correct=0,
        personal_answers=0, personal_correct=0, personal_base_correct=0, samples=samples,
        per_digit=[DigitStats(d, 0, 0, 0) for d in range(10)], confusions=[], buckets=[], daily=[],
        models=models or [],
    )


def _buckets(
    starts: np.ndarray, time_at: Callable[[int], datetime], ok: np.ndarray, base_ok: np.ndarray
) -> list[TimeBucket]:
    """Consecutive runs of labelled samples beginning at the indices ``starts``."""
    ends = np.append(starts[1:], len(ok))
    correct, base_correct = np.add.reduceat(ok, starts), np.add.reduceat(base_ok, starts)
    return [
        TimeBucket(start=time_at(int(lo)), end=time_at(int(hi) - 1),
                   count=int(hi - lo), correct=int(c), base_correct=int(b))
        for lo, hi, c, b in zip(starts, ends, correct, base_correct, strict=True)
    ]


def _stats_rows_query(session: Session, user_id: int) -> Select[tuple[int, Any]]:
    """One packed integer per labelled sample (truth, answer, base answer, personal flag) and its
    recording time, in recording order, read from one covering index of current labels. Plain
    integers keep 10,000 rows cheap: no per-row datetime or ORM processing."""
    labels = Label.__table__.c
    # SQLite: the stored naive-UTC text as is (parsing 10,000 dates in SQL or Python costs more
    # than the rest of the query); PostgreSQL: epoch seconds, computed by the server.
    if session.get_bind().dialect.name == "sqlite":
        when: Any = type_coerce(labels.recorded_at, String)
    else:
        when = cast(func.extract("epoch", labels.recorded_at), BigInteger)
    personal = case((labels.personal, 1), else_=0)
    packed = labels.digit * 1000 + labels.answer * 100 + labels.base_answer * 10 + personal
    return (
        select(packed, when)
        .where(labels.user_id == user_id, labels.superseded_at.is_(None))
        .order_by(labels.sample_id)
    )


def user_stats(session: Session, *, telegram_id: int, bucket_size: int = 20) -> UserStats:
    """Accuracy of the answers given against the user's current labels: overall, over the last 50,
    the base model's on the same samples, personal-model answers, per true digit with the most
    frequent confusions, per ``bucket_size`` labels and per UTC day (recording order), and the
    user's model versions. An unknown user gets all-zero stats."""
    user_id = user_id_for(session, telegram_id)
    if user_id is None:
        return _empty()
    models = [
        ModelVersionInfo(
            version_id=v.id, version=v.version, status=v.status, created_at=v.created_at,
            promoted_at=v.promoted_at, retired_at=v.retired_at, metrics=dict(v.metrics or {}),
            status_reason=v.status_reason,
        )
        for v in model_versions(session, user_id=user_id)
    ]
    rows = session.connection().execute(_stats_rows_query(session, user_id)).all()
    samples = count_samples(session, user_id=user_id)
    if not rows:
        return _empty(samples, models)
    n = len(rows)
    codes, stamps = zip(*rows, strict=True)
    code = np.array(codes, dtype=np.int64)
    if isinstance(stamps[0], str):
        day_keys = np.array(stamps, dtype="U10")  # 'YYYY-MM-DD' (numpy truncates)

        def time_at(i: int) -> datetime:
            return datetime.fromisoformat(stamps[i]).replace(tzinfo=UTC)
    else:
        seconds = np.array(stamps, dtype=np.int64)
        day_keys = seconds // 86_400

        def time_at(i: int) -> datetime:
            return datetime.fromtimestamp(int(seconds[i]), UTC)
    truth, answer, base, personal = code // 1000, code // 100 % 10, code // 10 % 10, code % 10 == 1
    ok, base_ok = answer == truth, base == truth

    count = np.bincount(truth, minlength=10)
    right = np.bincount(truth, weights=ok, minlength=10)
    base_right = np.bincount(truth, weights=base_ok, minlength=10)
    per_digit = [DigitStats(d, int(count[d]), int(right[d]), int(base_right[d])) for d in range(10)]
    pairs = np.bincount(truth[~ok] * 10 + answer[~ok], minlength=100)
    order = np.argsort(-pairs, kind="stable")
    confusions = [(int(k // 10), int(k % 10), int(pairs[k])) for k in order if pairs[k]]
    starts = np.arange(0, n, max(1, bucket_size))
    day_starts = np.concatenate(([0], np.flatnonzero(day_keys[1:] != day_keys[:-1]) + 1))
    return UserStats(
        labelled=n, correct=int(ok.sum()), base_correct=int(base_ok.sum()),
        last50_count=min(n, LAST_N), last50_correct=int(ok[-LAST_N:].sum()),
        last50_base_correct=int(base_ok[-LAST_N:].sum()),
        personal_answers=int(personal.sum()), personal_correct=int(ok[personal].sum()),
        personal_base_correct=int(base_ok[personal].sum()), samples=samples,
        per_digit=per_digit,
        confusions=confusions, buckets=_buckets(starts, time_at, ok, base_ok),
        daily=_buckets(day_starts, time_at, ok, base_ok), models=models,
    )
