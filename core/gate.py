"""The promotion gate: a pure function of a candidate's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MNIST_TOLERANCE = 0.003  # the gate's bound on the MNIST test accuracy drop (0.3 points)
# A tie in held-out accuracy is broken only by a clear NLL gain (at most this share of the
# current model's NLL), and only when the current model is not already near-certain there.
TIE_NLL_RATIO = 0.5
TIE_NLL_FLOOR = 0.02


@dataclass
class GateDecision:
    promote: bool
    reason: str  # human-readable, e.g. "held-out accuracy 0.70 -> 0.90; MNIST -0.05 points"


def gate(*, heldout_before: float, heldout_after: float, mnist_base: float, mnist_candidate: float,
         heldout_nll_before: float | None = None, heldout_nll_after: float | None = None,
         tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """Pure promotion rule.

    Promote only if the candidate beats the current model on the user's held-out samples AND its
    MNIST test accuracy is at least ``mnist_base - tolerance``; otherwise reject with a reason.
    Beating means strictly higher held-out accuracy, or the same accuracy with the held-out NLL at
    most halved from at least TIE_NLL_FLOOR. The held-out part is small (5-20 samples) and a good
    base reads all of it right, so accuracy alone ties for most users whose model did improve
    (docs/BENCHMARKS.md). Any lower NLL is too weak: that tie-break once promoted a model 0.4-0.7
    points worse for a user the base already read at 97.7%.
    """
    drop_points = 100 * (mnist_base - mnist_candidate)
    mnist_text = f"MNIST {mnist_candidate:.2%} vs base {mnist_base:.2%}"
    heldout_text = f"held-out accuracy {heldout_before:.1%} -> {heldout_after:.1%}"
    if mnist_candidate < mnist_base - tolerance - 1e-12:
        return GateDecision(False, f"rejected: {mnist_text} drops {drop_points:.2f} points "
                                   f"(bound {100 * tolerance:.1f}); {heldout_text}")
    if heldout_after > heldout_before + 1e-12:
        return GateDecision(True, f"promoted: {heldout_text}; {mnist_text}")
    if heldout_nll_before is not None and heldout_nll_after is not None:
        heldout_text += f", held-out NLL {heldout_nll_before:.3f} -> {heldout_nll_after:.3f}"
        if (heldout_after >= heldout_before - 1e-12 and heldout_nll_before >= TIE_NLL_FLOOR
                and heldout_nll_after <= TIE_NLL_RATIO * heldout_nll_before):
            return GateDecision(True, f"promoted: {heldout_text} (same accuracy, clearly more confident "
                                      f"where right); {mnist_text}")
    return GateDecision(False, f"rejected: not better on the held-out samples ({heldout_text}); {mnist_text}")


def gate_metrics(metrics: dict[str, Any], tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """``gate`` applied to a result's metrics dict (the keys ``finetune_user`` writes)."""
    return gate(heldout_before=metrics["heldout_before"], heldout_after=metrics["heldout_after"],
                mnist_base=metrics["mnist_base_accuracy"], mnist_candidate=metrics["mnist_accuracy"],
                heldout_nll_before=metrics.get("heldout_nll_before"),
                heldout_nll_after=metrics.get("heldout_nll_after"), tolerance=tolerance)
