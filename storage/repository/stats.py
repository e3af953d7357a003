"""A user's statistics: how often the answers were right, per digit, over time, per model."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import PERSONAL, Label, Prediction
from storage.records import DigitStats, ModelVersionInfo, TimeBucket, UserStats
from storage.repository._common import user_id_for
from storage.repository.finetune import model_versions
from storage.repository.readings import count_samples

LAST_N = 50


def _empty(samples: int = 0, models: list[ModelVersionInfo] | None = None) -> UserStats:
    return UserStats(
        labelled=0, correct=0, base_correct=0, last50_count=0, last50_correct=0, last50_base_correct=0,
        personal_answers=0, personal_correct=0, personal_base_correct=0, samples=samples,
        per_digit=[DigitStats(d, 0, 0, 0) for d in range(10)], confusions=[], buckets=[], daily=[],
        models=models or [],
    )


def _bucket(times: list[datetime], ok: np.ndarray, base_ok: np.ndarray, lo: int, hi: int) -> TimeBucket:
    return TimeBucket(start=times[lo], end=times[hi - 1], count=hi - lo,
                      correct=int(ok[lo:hi].sum()), base_correct=int(base_ok[lo:hi].sum()))


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
    rows = session.execute(
        select(Label.digit, Prediction.digit, Prediction.base_digit, Prediction.source,
               Prediction.created_at)
        .join(Prediction, Prediction.sample_id == Label.sample_id)
        .where(Label.user_id == user_id, Label.superseded_at.is_(None))
        .order_by(Label.sample_id)
    ).all()
    samples = count_samples(session, user_id=user_id)
    if not rows:
        return _empty(samples, models)
    n = len(rows)
    truth = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    answer = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
    base = np.fromiter((r[2] for r in rows), dtype=np.int64, count=n)
    personal = np.fromiter((r[3] == PERSONAL for r in rows), dtype=bool, count=n)
    times: list[datetime] = [r[4] for r in rows]
    ok, base_ok = answer == truth, base == truth

    per_digit = [
        DigitStats(d, int(mask.sum()), int(ok[mask].sum()), int(base_ok[mask].sum()))
        for d in range(10)
        for mask in [truth == d]
    ]
    wrong = ~ok
    confusions = Counter(zip(truth[wrong].tolist(), answer[wrong].tolist(), strict=True))
    size = max(1, bucket_size)
    buckets = [_bucket(times, ok, base_ok, lo, min(lo + size, n)) for lo in range(0, n, size)]
    daily: list[TimeBucket] = []
    lo = 0
    for i in range(1, n + 1):
        if i == n or times[i].date() != times[lo].date():
            daily.append(_bucket(times, ok, base_ok, lo, i))
            lo = i
    return UserStats(
        labelled=n, correct=int(ok.sum()), base_correct=int(base_ok.sum()),
        last50_count=min(n, LAST_N), last50_correct=int(ok[-LAST_N:].sum()),
        last50_base_correct=int(base_ok[-LAST_N:].sum()),
        personal_answers=int(personal.sum()), personal_correct=int(ok[personal].sum()),
        personal_base_correct=int(base_ok[personal].sum()), samples=samples,
        per_digit=per_digit,
        confusions=[(t, a, c) for (t, a), c in confusions.most_common()],
        buckets=buckets, daily=daily, models=models,
    )
