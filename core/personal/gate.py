"""A fine-tune's measurements (``FinetuneMetrics``) and the promotion gate, a pure function of them.

The evidence is cross-validated over ALL the user's labelled samples (core.personal.batched_finetune): k
fold models (``FinetuneConfig.folds``, 5), each trained on the other k-1 folds with the same recipe
as the model that ships, predict the fold they did not see, so every labelled digit is read once by
a model that never trained on it. ``heldout_after`` is the accuracy of the answer the user would be
served (candidate with its calibrated base fallback) on those out-of-fold readings;
``heldout_before`` the accuracy of what they are served now on the same digits. For a returning
user the comparison uses only the digits labelled after their current model was trained (when
there are at least ``MIN_FRESH`` of them): the current model learnt the earlier ones.

Rule (chosen on the dev writers, ``bench/tune_finetune.py``; docs/BENCHMARKS.md, issue 12):

1. MNIST: the candidate alone (no fallback) may read at most ``floor(MNIST_TOLERANCE * n)`` fewer of
   the n probe digits than the base (n = 2,000 during jobs: at most 6 digits, 0.30 points),
   inclusive, counted in whole digits so that float rounding cannot turn "exactly 0.30 points" into
   a rejection.
2. The user's digits: promote when the candidate reads strictly more of them right; on a tie in
   the count (e.g. both 100%), when its out-of-fold NLL is lower than the current answer's by at
   least ``TIE_NLL_MARGIN`` nats per digit. Otherwise keep the current model.
3. Never when early stopping kept step 0 (the base head itself, with another temperature: seen on
   the eval writers at 10 labels, where it would have been announced as a "new" model).

The k-fold estimate replaces a 20% held-out split (5-20 digits) on which a good base often read all
digits right, so better models tied and were blocked, and one digit swung the decision by 5-20
points.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MNIST_TOLERANCE = 0.003  # the gate's bound on the MNIST test accuracy drop (0.3 points), inclusive
# A tie in the count of right answers is broken by the out-of-fold NLL (mean nats per digit).
TIE_NLL_MARGIN = 0.01
MIN_FRESH = 10  # a returning user's comparison needs this many digits their current model never saw


@dataclass
class FinetuneMetrics:
    """What one fine-tune measured; stored as JSON (``to_dict``) in the job row, the model row and
    the personal checkpoint. ``from_dict`` reads rows written by older code (missing keys: None).

    Accuracies are fractions 0..1; ``heldout_*`` are over the ``n_holdout`` digits compared
    (out-of-fold readings, see the module docstring); the names are kept from the held-out split
    they replaced because the bot and stored rows use them.
    """

    n_labels: int = 0  # labelled samples the user had
    n_train: int | None = None  # samples the shipped model trained on (all of them)
    n_holdout: int | None = None  # digits the before/after comparison is over
    folds: int | None = None  # k of the k-fold estimate (None: an old row, a 20% held-out split)
    heldout_before: float | None = None  # what the user is served now, on those digits
    heldout_after: float | None = None  # the candidate with its base fallback (what would be served)
    heldout_personal: float | None = None  # the candidate alone
    heldout_nll_before: float | None = None
    heldout_nll_after: float | None = None
    mnist_accuracy: float | None = None  # the candidate alone on the MNIST probe
    mnist_base_accuracy: float | None = None
    mnist_combined_accuracy: float | None = None  # the candidate with its base fallback
    mnist_subset: int | None = None  # MNIST probe digits
    best_step: int | None = None  # training step kept (early stopping on the out-of-fold loss)
    train_seconds: float | None = None
    version: int | None = None  # the stored model version (set by the worker)
    reason: str | None = None  # the gate's reason (set by the worker)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields that are set (None left out, as old rows lacked them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FinetuneMetrics:
        """Tolerant of old rows: numbers stored as floats, missing keys, unknown keys (ignored), junk."""
        data = data or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = data.get(f.name)
            kind = str(f.type)
            if kind.startswith("str"):
                values[f.name] = raw if isinstance(raw, str) else None
            elif isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                values[f.name] = None
            else:
                values[f.name] = round(raw) if kind.startswith("int") else float(raw)
        if values["n_labels"] is None:
            values["n_labels"] = 0
        return cls(**values)

    def __contains__(self, name: str) -> bool:
        """``"best_step" in metrics``: the field exists and is set (for callers of the old dict)."""
        return getattr(self, name, None) is not None


@dataclass
class GateDecision:
    promote: bool
    reason: str  # human-readable, e.g. "promoted: 72/100 -> 91/100 of your digits; MNIST ..."


def gate(*, heldout_before: float, heldout_after: float, mnist_base: float, mnist_candidate: float,
         heldout_nll_before: float | None = None, heldout_nll_after: float | None = None,
         n_compared: int | None = None, mnist_subset: int | None = None,
         tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """The promotion rule of the module docstring, on plain numbers.

    ``n_compared``: how many digits the accuracies are over (to compare counts, not floats);
    ``mnist_subset``: how many MNIST probe digits (likewise). None: compared as fractions with a
    small slack.
    """
    if mnist_subset:
        dropped = round((mnist_base - mnist_candidate) * mnist_subset)
        allowed = math.floor(tolerance * mnist_subset + 1e-9)
        over = dropped > allowed
    else:
        over = mnist_candidate < mnist_base - tolerance - 1e-9
    drop_points = 100 * (mnist_base - mnist_candidate)
    mnist_text = f"MNIST {mnist_candidate:.2%} vs base {mnist_base:.2%}"
    if n_compared:
        right_before, right_after = round(heldout_before * n_compared), round(heldout_after * n_compared)
        heldout_text = (f"{right_before}/{n_compared} -> {right_after}/{n_compared} of your digits "
                        f"({heldout_before:.1%} -> {heldout_after:.1%}, cross-validated)")
    else:  # fractions: a difference below one digit in a thousand counts as a tie
        right_before, right_after = round(heldout_before * 1000), round(heldout_after * 1000)
        heldout_text = f"held-out accuracy {heldout_before:.1%} -> {heldout_after:.1%}"
    if over:
        return GateDecision(False, f"rejected: {mnist_text} drops {drop_points:.2f} points "
                                   f"(bound {100 * tolerance:.1f}); {heldout_text}")
    if right_after > right_before:
        return GateDecision(True, f"promoted: {heldout_text}; {mnist_text}")
    if heldout_nll_before is not None and heldout_nll_after is not None:
        heldout_text += f", NLL {heldout_nll_before:.3f} -> {heldout_nll_after:.3f}"
        if right_after == right_before and heldout_nll_after <= heldout_nll_before - TIE_NLL_MARGIN:
            return GateDecision(True, f"promoted: {heldout_text} (as many right, surer of them); {mnist_text}")
    return GateDecision(False, f"rejected: not better on your digits ({heldout_text}); {mnist_text}")


def gate_metrics(metrics: FinetuneMetrics, tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """``gate`` applied to a fine-tune's metrics; rejects when they lack the measurements."""
    m = metrics
    if m.heldout_before is None or m.heldout_after is None or m.mnist_base_accuracy is None \
            or m.mnist_accuracy is None:
        return GateDecision(False, "rejected: not measured")
    if m.best_step == 0:  # early stopping kept the starting (base) head: only its temperature differs
        return GateDecision(False, "rejected: no training step improved the out-of-fold readings")
    return gate(heldout_before=m.heldout_before, heldout_after=m.heldout_after,
                mnist_base=m.mnist_base_accuracy, mnist_candidate=m.mnist_accuracy,
                heldout_nll_before=m.heldout_nll_before, heldout_nll_after=m.heldout_nll_after,
                n_compared=m.n_holdout, mnist_subset=m.mnist_subset, tolerance=tolerance)
