"""Plain value types the repository takes and returns (no ORM state, safe after the session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

IMAGE_SHAPE = (28, 28)
IMAGE_BYTES = 28 * 28
TRUE_TEXT_MAX = 32  # the longest whole answer kept for a reading (``readings.true_text``)


@dataclass(frozen=True)
class DigitRecord:
    """One recognised digit to store: the normalised crop and the answer given for it."""

    image: np.ndarray | bytes  # (28, 28) uint8, or its 784 row-major bytes
    digit: int
    confidence: float
    source: str  # "base" | "personal"
    base_digit: int
    base_confidence: float
    model_version_id: int | None = None  # the personal ModelVersion.id that answered; None for base


@dataclass(frozen=True)
class ReadingRecord:
    """What :func:`record_reading` stored."""

    reading_id: int
    user_id: int
    sample_ids: list[int]  # by position, left to right


@dataclass(frozen=True)
class DigitView:
    sample_id: int
    position: int
    digit: int  # the answer given
    confidence: float
    source: str
    base_digit: int
    base_confidence: float
    model_version_id: int | None
    label: int | None  # the current label, None when not labelled yet
    label_kind: str | None  # "confirmed" | "corrected" | None


@dataclass(frozen=True)
class ReadingView:
    reading_id: int
    user_id: int
    chat_id: int
    file_id: str
    file_unique_id: str
    bot_message_id: int | None
    status: str
    created_at: datetime
    digits: list[DigitView]
    # The user's whole answer when its digit count differed from the digits read (e.g. "42711" for
    # a reading of 4 digits): kept as the reading's text, with no per-digit label made from it.
    true_text: str | None = None

    @property
    def text(self) -> str:
        """The digits as answered, e.g. "4271"."""
        return "".join(str(d.digit) for d in self.digits)

    @property
    def labelled_text(self) -> str:
        """The digits as they stand after the user's labels ("?" where unknown)."""
        return "".join(str(d.label if d.label is not None else d.digit) for d in self.digits)


@dataclass(frozen=True)
class LabelRecord:
    label_id: int
    sample_id: int
    reading_id: int
    position: int
    digit: int
    kind: str  # "confirmed" | "corrected"
    predicted: int  # the answer that had been given
    created_at: datetime


@dataclass(frozen=True)
class TrainingSet:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64, current labels only
    sample_ids: np.ndarray  # (N,) int64, in the order samples were recorded
    labelled_at: list[datetime]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DigitStats:
    digit: int  # the true digit (the user's label)
    count: int
    correct: int  # answers given that matched
    base_correct: int  # base model answers that matched

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.count if self.count else None

    @property
    def base_accuracy(self) -> float | None:
        return self.base_correct / self.count if self.count else None


@dataclass(frozen=True)
class TimeBucket:
    """Consecutive labelled samples (in recording order) grouped for an accuracy-over-time chart."""

    start: datetime
    end: datetime
    count: int
    correct: int
    base_correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count

    @property
    def base_accuracy(self) -> float:
        return self.base_correct / self.count


@dataclass(frozen=True)
class ModelVersionInfo:
    version_id: int
    version: int
    status: str
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None
    metrics: dict[str, Any]
    status_reason: str | None


@dataclass(frozen=True)
class UserStats:
    labelled: int  # samples with a current label
    correct: int  # of those, answered right
    base_correct: int  # of those, the base model's own answer was right
    last50_count: int
    last50_correct: int
    last50_base_correct: int
    personal_answers: int  # labelled samples answered by a personal model
    personal_correct: int
    personal_base_correct: int  # the base model on those same samples
    samples: int  # every stored sample, labelled or not
    per_digit: list[DigitStats]  # digits 0..9
    confusions: list[tuple[int, int, int]]  # (true, answered, count), most frequent first
    buckets: list[TimeBucket]
    daily: list[TimeBucket]  # one bucket per UTC day with labels
    models: list[ModelVersionInfo] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def base_accuracy(self) -> float | None:
        return self.base_correct / self.labelled if self.labelled else None

    @property
    def last50_accuracy(self) -> float | None:
        return self.last50_correct / self.last50_count if self.last50_count else None

    @property
    def last50_base_accuracy(self) -> float | None:
        return self.last50_base_correct / self.last50_count if self.last50_count else None


@dataclass(frozen=True)
class FinetuneStatus:
    """Where one fine-tune job of a user stands (for /train's answer and /stats)."""

    job_id: int
    state: str  # "queued" | "running" | "succeeded" | "failed"
    outcome: str | None  # when succeeded: "promoted" (or "promoted+notified") | "rejected"
    requested_at: datetime
    finished_at: datetime | None
    version: int | None = None  # the model version it trained
    accuracy_before: float | None = None  # held-out accuracy of the model the user had
    accuracy_after: float | None = None  # and of the new one
    active_version: int | None = None  # the user's live personal model now (None: the base model)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")

    @property
    def promoted(self) -> bool:
        return self.state == "succeeded" and (self.outcome or "").startswith("promoted")


@dataclass(frozen=True)
class FinetuneRequest:
    """The answer to /train (storage.repository.jobs.request_job)."""

    accepted: bool
    reason: str  # "queued" | "already_queued" | "not_enough_labels" | "no_new_labels" | "unknown_user"
    job_id: int | None = None  # the queued (or already open) job
    labels: int = 0
    needed: int = 0


@dataclass(frozen=True)
class Claim:
    """A job a worker claimed; ``attempt`` is the fencing token of that worker's later writes."""

    job_id: int
    user_id: int
    telegram_id: int
    attempt: int


@dataclass(frozen=True)
class PendingNotice:
    """A finished job whose outcome the user has not been told yet (the outbox)."""

    job_id: int
    telegram_id: int
    metrics: dict[str, Any]  # the job's FinetuneMetrics.to_dict()
    promoted: bool  # False: their current model was kept
