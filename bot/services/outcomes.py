"""What the services answer the handlers: plain values, and the refusals they raise."""

from __future__ import annotations

from dataclasses import dataclass

from bot.views import ReadingCard


class NotFound(LookupError):
    """The reading is gone (e.g. after /forget) or never existed."""


class NotOwner(PermissionError):
    """The reading belongs to someone else: only the person who sent the photo may label it."""


class DeadButton(LookupError):
    """A button acting on a reading other than the one its message shows."""


class BadLabel(ValueError):
    """A text label storage refuses: not digits 0-9, or more than ``longest`` of them."""

    def __init__(self, longest: int) -> None:
        super().__init__(f"expected 1 to {longest} digits")
        self.longest = longest


@dataclass(frozen=True)
class PhotoOutcome:
    # "ok" | "duplicate" | "quota" | any core.vision.preprocess status ("no_digit", "not_an_image", ...)
    status: str
    card: ReadingCard | None = None
    quota: int | None = None


@dataclass(frozen=True)
class TrainOutcome:
    # "queued" | "already_queued" | "not_enough_labels" | "no_new_labels" | "unknown_user" | "scheduled"
    reason: str
    labels: int = 0
    needed: int = 0
    interval_s: float = 0.0
    job_id: int | None = None  # the queued (or already open) fine-tune job


@dataclass(frozen=True)
class Tapped:
    """A reading button's outcome: the user's language, and the reading as stored (None: refused)."""

    language: str
    card: ReadingCard | None
    refusal: type[Exception] | None = None  # NotOwner | NotFound | DeadButton
