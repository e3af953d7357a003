"""Per-user fine-tuning: the public entry point, a batch of one on core.personal.batched_finetune's path.

The trunk (conv1/bn1/conv2/bn2, ``FROZEN_PREFIXES``) is frozen and every BatchNorm stays in eval
mode, so its features are computed once per sample (user samples, their augmented copies and the
replayed MNIST samples) and only the head is trained on those features, with replay (distilled
towards the base), an L2 pull to the base, early stopping and a k-fold gate (core.personal.gate).
Training is step-based and deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
import torch

from core.model.network import Checkpoint, head_state, merge_state
from core.personal.batched_finetune import FinetuneResult, UserSamples, finetune_users, mixed_loss
from core.personal.calibrate import MnistProbe, trunk_features
from core.personal.finetune_prep import (
    LIGHT_AUGMENT,
    FinetuneConfig,
    ReplayBank,
    cached_replay,
    check_samples,
    fold_assignment,
)
from core.personal.gate import MNIST_TOLERANCE, FinetuneMetrics, GateDecision, gate, gate_metrics

__all__ = [  # the public API (see docs/INTERFACES.md), most of it defined in the helper modules
    "LIGHT_AUGMENT", "MNIST_TOLERANCE", "FinetuneConfig", "FinetuneMetrics", "FinetuneResult", "GateDecision",
    "ReplayBank", "UserSamples", "cached_replay", "check_samples", "finetune_user", "finetune_users",
    "fold_assignment", "gate", "gate_metrics", "head_state", "merge_state", "mixed_loss", "trunk_features",
]


def finetune_user(base: Checkpoint, images: np.ndarray, labels: np.ndarray, *,
                  current: Checkpoint | None = None, config: FinetuneConfig | None = None,
                  device: str | torch.device | None = None, replay: ReplayBank | None = None,
                  probe: MnistProbe | None = None) -> FinetuneResult:
    """Fine-tune one user's head, calibrate it, and decide whether it should go live.

    images: uint8 (N,28,28) normalised crops (white on black) in labelling order; labels: (N,).
    current: the user's active personal checkpoint: what the candidate must beat (training starts
    from the base either way; see core.personal.batched_finetune), or None for the base model.
    device: None picks CUDA when available. replay/probe: None = the MNIST ones, cached per process.
    The result's checkpoint has meta {"kind": "personal", "temperature", "threshold",
    "base_temperature", "base_data_sha256", "seed", "config"} and metrics ``result.metrics.to_dict()``
    (``FinetuneMetrics``). Never raises on too few labels: returns a rejected result.
    """
    return finetune_users(base, [UserSamples(images, labels, current)], config=config, device=device,
                          chunk_size=1, replay=replay, probe=probe)[0]
