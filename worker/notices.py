"""What the bot tells a user about a fine-tune's outcome (docs/INTERFACES.md "## worker")."""

from __future__ import annotations

from typing import Any

from core.personal.gate import FinetuneMetrics


def summary_of(metrics: dict[str, Any], *, promoted: bool = True) -> dict[str, Any]:
    """The notice, from the job's stored metrics (``FinetuneMetrics``; rows of the old code read too)."""
    m = FinetuneMetrics.from_dict(metrics)
    return {
        "promoted": promoted,
        "version": m.version,
        "labels": m.n_labels,
        "accuracy_before": m.heldout_before,
        "accuracy_after": m.heldout_after,  # the candidate with its base fallback: what is served
        "combined_accuracy": m.heldout_after,
        "personal_accuracy": m.heldout_personal,
        "mnist_accuracy": m.mnist_accuracy,
        "heldout_samples": m.n_holdout or 0,
        "cross_validated": m.folds is not None,
        "trained": m.heldout_after is not None,  # False: too few labels, nothing was trained
        "reason": m.reason,
    }
