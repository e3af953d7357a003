"""Per-user fine-tuning of the trainable head, with replay, an L2 pull to the base, and a gate.

The trunk (conv1/bn1/conv2/bn2, ``FROZEN_PREFIXES``) is frozen and every BatchNorm stays in eval
mode, so its features are computed once per sample (user samples, their augmented copies and the
replayed MNIST samples) and only the head (conv3/bn3/fc1/fc2) is trained on those features.
Training is step-based and deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.augment import AugmentConfig
from core.model import FROZEN_PREFIXES, Checkpoint

# Light augmentation for user samples: the user's style is the signal, so keep it.
LIGHT_AUGMENT = AugmentConfig(rotate_deg=6.0, shift=0.06, scale=(0.93, 1.07), shear=0.08,
                              elastic_alpha=0.3, elastic_p=0.3, thickness_p=0.0)
MNIST_TOLERANCE = 0.003  # the gate's bound on the MNIST test accuracy drop (0.3 points)


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 60
    user_batch: int = 32  # user samples (augmented copies) per step
    replay_batch: int = 32  # replayed MNIST training samples per step
    lr: float = 1e-3  # Adam, head only
    l2_pull: float = 1e-3  # weight of sum((theta - theta_base)^2)
    augment_copies: int = 4  # augmented copies per user training sample (features precomputed)
    augment: AugmentConfig | None = LIGHT_AUGMENT
    holdout_fraction: float = 0.2
    min_holdout: int = 2
    min_labels: int = 5  # fewer labelled samples than this: nothing is trained
    eval_every: int = 10  # early stopping: held-out loss checked every this many steps
    replay_size: int = 2048  # MNIST training samples in the replay bank
    mnist_subset: int = 2000  # MNIST test samples used by the gate (0 = all 10,000)
    seed: int = 0


@dataclass
class GateDecision:
    promote: bool
    reason: str  # human-readable, e.g. "held-out accuracy 0.70 -> 0.90; MNIST -0.05 points"


@dataclass
class FinetuneResult:
    checkpoint: Checkpoint  # personal checkpoint: head keys only; meta and metrics filled in
    decision: GateDecision
    metrics: dict[str, float] = field(default_factory=dict)  # same as checkpoint.metrics


def head_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable (non-frozen) entries of a full state dict: what a personal checkpoint stores."""
    return {k: v for k, v in state_dict.items() if not k.startswith(FROZEN_PREFIXES)}


def merge_state(base: Checkpoint, personal: Checkpoint | None) -> dict[str, torch.Tensor]:
    """A full state dict: the base weights with the personal head (if any) laid over them."""
    raise NotImplementedError


def split_holdout(labels: np.ndarray, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): stratified by digit, deterministic for config.seed."""
    raise NotImplementedError


def finetune_user(base: Checkpoint, images: np.ndarray, labels: np.ndarray, *,
                  current: Checkpoint | None = None, config: FinetuneConfig | None = None,
                  device: str | torch.device | None = None) -> FinetuneResult:
    """Fine-tune one user's head, calibrate it, and decide whether it should go live.

    images: uint8 (N,28,28) normalised crops (white on black) in labelling order; labels: (N,).
    current: the user's active personal checkpoint (training starts from it; it is what the
    candidate must beat on the held-out samples), or None for the base model.
    device: None picks CUDA when available.
    The result's checkpoint has meta {"kind": "personal", "temperature", "threshold",
    "base_temperature", "base_data_sha256", "seed", "config"} and metrics {heldout_before,
    heldout_after, heldout_combined, heldout_nll_before, heldout_nll_after, mnist_accuracy,
    mnist_base_accuracy, mnist_combined_accuracy, mnist_subset, n_labels, n_train, n_holdout,
    best_step, train_seconds}. Never raises on too few labels: returns a rejected result.
    """
    raise NotImplementedError


def gate(*, heldout_before: float, heldout_after: float, mnist_base: float, mnist_candidate: float,
         heldout_nll_before: float | None = None, heldout_nll_after: float | None = None,
         tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """Pure promotion rule.

    Promote only if the candidate beats the current model on the user's held-out samples
    (higher accuracy, or equal accuracy and a lower calibrated NLL when both are given) AND its
    MNIST test accuracy is at least ``mnist_base - tolerance``. Otherwise reject with a reason.
    """
    raise NotImplementedError


def gate_metrics(metrics: dict[str, Any], tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """``gate`` applied to a result's metrics dict (the keys ``finetune_user`` writes)."""
    raise NotImplementedError
