"""The real-photo development set (real-dev): its labels, its four groups, and whole-string scoring.

Standard library only, so that tests can import it without torch or OpenCV. The set lives beside
the checkout in ``../shared/data/real-dev``; ``DIGITS_DATA_DIR`` (the parent ``shared/data`` folder)
or an explicit directory moves it. Its files are read in place and never copied.

    from bench.real_photos import load_photos, score
    photos = load_photos()
    accuracy = score((photo, read(photo.path.read_bytes())) for photo in photos)
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUBDIR = "real-dev"

PHONE_SINGLE = "phone photos, single digit"
PHONE_ROWS = "phone photos, rows"
CHEQUE_DIGITS = "bank-cheque digit crops"
CHEQUE_ROWS = "bank-cheque amounts, rows"
GROUPS = (PHONE_SINGLE, PHONE_ROWS, CHEQUE_DIGITS, CHEQUE_ROWS)
# The rows target is on phone and cheque rows together, so they are also scored as one group.
ALL_ROWS = "rows (phone + cheque)"
ROW_GROUPS = (PHONE_ROWS, CHEQUE_ROWS)


@dataclass(frozen=True)
class RealPhoto:
    path: Path
    digits: str
    kind: str  # "single" or "row"
    source: str
    group: str


def group_of(kind: str, source: str) -> str:
    cheque = "ORAND" in source
    if kind == "row":
        return CHEQUE_ROWS if cheque else PHONE_ROWS
    return CHEQUE_DIGITS if cheque else PHONE_SINGLE


def real_dev_dir(data: str | Path | None = None) -> Path:
    """``data`` (or ``DIGITS_DATA_DIR``) is the parent ``shared/data`` folder; real-dev itself is accepted too."""
    base = data if data is not None else os.environ.get("DIGITS_DATA_DIR")
    if base is None:
        return PROJECT_ROOT.parent / "shared" / "data" / SUBDIR
    base = Path(base)
    return base if (base / "labels.json").exists() else base / SUBDIR


def load_photos(data: str | Path | None = None) -> list[RealPhoto]:
    """Every labelled photo, in the order of labels.json. FileNotFoundError when the set is absent."""
    directory = real_dev_dir(data)
    labels = directory / "labels.json"
    if not labels.exists():
        raise FileNotFoundError(f"real-dev not found: no {labels} (pass --data or set DIGITS_DATA_DIR)")
    return [RealPhoto(path=directory / item["file"], digits=item["digits"], kind=item["kind"],
                      source=item["source"], group=group_of(item["kind"], item["source"]))
            for item in json.loads(labels.read_text())]


def only_digits(text: str) -> str:
    """The ASCII digits of ``text`` in order; NFKC first, so that a full-width "１" counts as a 1."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch in "0123456789")


def score(readings: Iterable[tuple[RealPhoto, str]]) -> dict[str, float]:
    """Share of photos whose digits were read exactly, per group present, plus ALL_ROWS when rows are.

    A reading is reduced to its ASCII digits first (off-the-shelf engines also return letters and
    punctuation); an empty reading is a miss.
    """
    results: dict[str, list[bool]] = defaultdict(list)
    for photo, reading in readings:
        right = only_digits(reading) == photo.digits
        results[photo.group].append(right)
        if photo.group in ROW_GROUPS:
            results[ALL_ROWS].append(right)
    order = [*GROUPS, ALL_ROWS]
    return {group: sum(results[group]) / len(results[group]) for group in order if results[group]}
