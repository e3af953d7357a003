"""Domain errors raised by the repository (the bot turns each into a friendly reply)."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the repository raises on purpose."""


class UnknownSample(StorageError, LookupError):
    """No such reading / digit position (or it was forgotten)."""


class NotYourSample(StorageError, PermissionError):
    """The reading exists but belongs to another user: nobody reads or labels another's samples."""


class InvalidLabel(StorageError, ValueError):
    """A label that is not a digit 0-9, or a text reply whose length does not match the reading."""


class QuotaExceeded(StorageError):
    """Recording this photo would take the user past ``Settings.max_samples_per_user``."""

    def __init__(self, *, limit: int, stored: int) -> None:
        super().__init__(f"sample quota reached: {stored} stored, limit {limit}")
        self.limit = limit
        self.stored = stored


class UnknownModelVersion(StorageError, LookupError):
    """No such model version for this user."""


class InvalidTransition(StorageError, ValueError):
    """A model version or job state change that is not allowed (e.g. promoting a rejected model)."""


class UnknownJob(StorageError, LookupError):
    """No such fine-tune job."""


class CorruptWeights(StorageError):
    """Stored weight bytes do not match their recorded sha256 (or the file is missing)."""
