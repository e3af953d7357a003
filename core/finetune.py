"""Per-user fine-tuning of the trainable head, with replay, an L2 pull to the base, and a gate.

The trunk (conv1/bn1/conv2/bn2, ``FROZEN_PREFIXES``) is frozen and every BatchNorm stays in eval
mode, so its features are computed once per sample (user samples, their augmented copies and the
replayed MNIST samples) and only the head (conv3/bn3/fc1/fc2) is trained on those features.
Training is step-based and deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from core.calibrate import (
    NEVER_PERSONAL,
    MnistProbe,
    cached_probe,
    calibrated_probabilities,
    choose_threshold,
    combine,
    fit_base_temperature,
    fit_temperature,
    head_logits,
    pick_device,
    trunk_features,
)
from core.finetune_prep import (
    LIGHT_AUGMENT,
    FinetuneConfig,
    PreparedUser,
    ReplayBank,
    cached_replay,
    check_samples,
    prepare_user,
    split_holdout,
)
from core.gate import MNIST_TOLERANCE, GateDecision, gate, gate_metrics
from core.model import FROZEN_PREFIXES, Checkpoint, DigitNet, head_state, merge_state

__all__ = [  # the public API (see docs/INTERFACES.md), some of it defined in the helper modules
    "LIGHT_AUGMENT", "MNIST_TOLERANCE", "FinetuneConfig", "FinetuneResult", "GateDecision", "PreparedUser",
    "ReplayBank", "cached_replay", "check_samples", "evaluate_candidate", "finetune_user", "gate",
    "gate_metrics", "head_state", "merge_state", "mixed_loss", "prepare_user", "split_holdout", "train_head",
]


@dataclass
class FinetuneResult:
    checkpoint: Checkpoint  # personal checkpoint: head keys only; meta and metrics filled in
    decision: GateDecision
    metrics: dict[str, float] = field(default_factory=dict)  # same as checkpoint.metrics


def mixed_loss(logits: torch.Tensor, user_labels: torch.Tensor, replay_base_logits: torch.Tensor,
               config: FinetuneConfig) -> torch.Tensor:
    """Sum over users of each user's mean loss; logits (..., B, 10).

    The first ``user_labels.shape[-1]`` rows are the user's samples (cross-entropy with their
    labels); the rest are replayed MNIST samples, distilled towards the base model's softened
    probabilities (Hinton's T^2-scaled soft cross-entropy), which keeps the base's behaviour on
    standard digits far better than their hard labels would.
    """
    n_user, classes = user_labels.shape[-1], logits.shape[-1]
    user_part = F.cross_entropy(logits[..., :n_user, :].reshape(-1, classes), user_labels.reshape(-1),
                                reduction="sum")
    tau = config.distill_temperature
    soft = torch.softmax(replay_base_logits / tau, dim=-1)
    distill = -(soft * F.log_softmax(logits[..., n_user:, :] / tau, dim=-1)).sum() * tau ** 2
    return (user_part + distill) / logits.shape[-2]


def train_head(model: DigitNet, train_features: torch.Tensor, prepared: PreparedUser, replay: ReplayBank,
               holdout_features: torch.Tensor, anchor: dict[str, torch.Tensor],
               config: FinetuneConfig) -> tuple[dict[str, torch.Tensor], int]:
    """Train the head of ``model`` in place (eval mode throughout: BN statistics never move, no
    dropout). Returns the head state with the lowest held-out NLL and the step it was taken at."""
    model.eval()
    device = train_features.device
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(FROZEN_PREFIXES))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(params.values(), lr=config.lr, eps=config.adam_eps)
    train_labels = prepared.train_labels.to(device)
    holdout_labels = prepared.holdout_labels.to(device)
    user_schedule = prepared.user_schedule.to(device)
    replay_schedule = prepared.replay_schedule.to(device)

    def holdout_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.head(holdout_features), holdout_labels))

    best_loss, best_step = holdout_loss(), 0
    best = {k: v.detach().clone() for k, v in head_state(model.state_dict()).items()}
    for step in range(config.steps):
        u, r = user_schedule[step], replay_schedule[step]
        # channels_last: the conv3 kernels run ~25% faster on CPU in this layout
        features = torch.cat([train_features[u], replay.features[r]]).contiguous(
            memory_format=torch.channels_last)
        loss = mixed_loss(model.head(features), train_labels[u], replay.base_logits[r], config)
        pull = sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())
        optimizer.zero_grad(set_to_none=True)
        (loss + config.l2_pull * pull).backward()
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            current = holdout_loss()
            if current < best_loss:
                best_loss, best_step = current, step + 1
                best = {k: v.detach().clone() for k, v in head_state(model.state_dict()).items()}
    for param in model.parameters():
        param.requires_grad_(False)
    return best, best_step


def _served_probs(base_probs: torch.Tensor, model: DigitNet, current: Checkpoint | None,
                  features: torch.Tensor) -> torch.Tensor:
    """Calibrated probabilities of the answers the user gets now (base, or current personal + fallback)."""
    if current is None:
        return base_probs
    model.load_state_dict(head_state(current.state_dict), strict=False)
    current_probs = calibrated_probabilities(head_logits(model, features),
                                             float(current.meta.get("temperature", 1.0)))
    return combine(current_probs, base_probs, float(current.meta.get("threshold", NEVER_PERSONAL))).probabilities


def _accuracy_nll(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return 0.0, 0.0
    accuracy = float((probs.argmax(1) == labels).float().mean())
    return accuracy, float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean())


def evaluate_candidate(base: Checkpoint, current: Checkpoint | None, head: dict[str, torch.Tensor],
                       holdout_features: torch.Tensor, holdout_labels: torch.Tensor, probe: MnistProbe,
                       extra_metrics: dict[str, float], config: FinetuneConfig,
                       mnist_logits: torch.Tensor | None = None) -> FinetuneResult:
    """Calibrate a trained head (temperature + threshold), measure it, gate it, package it.

    ``mnist_logits``: the head's logits on the probe when already computed (batched path)."""
    device = holdout_features.device
    labels = holdout_labels.to(device)
    model = base.build().to(device)
    base_temperature = fit_base_temperature(base, probe)
    base_probs = calibrated_probabilities(head_logits(model, holdout_features), base_temperature)
    before_probs = _served_probs(base_probs, model, current, holdout_features)
    model.load_state_dict(head, strict=False)
    candidate_logits = head_logits(model, holdout_features)
    mnist_logits = probe.logits(head) if mnist_logits is None else mnist_logits
    # Half the weight on the user's held-out samples, half on the MNIST probe: a few held-out
    # samples alone would give a degenerate temperature.
    weights = torch.cat([torch.full((len(labels),), 0.5 / max(len(labels), 1)),
                         torch.full((len(probe.labels),), 0.5 / len(probe.labels))])
    temperature = fit_temperature(torch.cat([candidate_logits, mnist_logits]).cpu(),
                                  torch.cat([labels, probe.labels]).cpu(), weights)
    candidate_probs = calibrated_probabilities(candidate_logits, temperature)
    mnist_probs = calibrated_probabilities(mnist_logits, temperature)
    mnist_base_probs = calibrated_probabilities(probe.base_logits, base_temperature)
    threshold = choose_threshold(candidate_probs, base_probs, labels, mnist_personal_probs=mnist_probs,
                                 mnist_base_probs=mnist_base_probs, mnist_labels=probe.labels)
    after = combine(candidate_probs, base_probs, threshold)
    mnist_combined = combine(mnist_probs, mnist_base_probs, threshold)
    heldout_before, nll_before = _accuracy_nll(before_probs, labels)
    heldout_after, nll_after = _accuracy_nll(after.probabilities, labels)
    metrics = {
        **extra_metrics,
        "heldout_before": heldout_before, "heldout_after": heldout_after,
        "heldout_personal": _accuracy_nll(candidate_probs, labels)[0],
        "heldout_nll_before": nll_before, "heldout_nll_after": nll_after,
        "mnist_accuracy": float((mnist_logits.argmax(1) == probe.labels).float().mean()),
        "mnist_base_accuracy": probe.accuracy(),
        "mnist_combined_accuracy": float((mnist_combined.digits == probe.labels).float().mean()),
        "mnist_subset": float(len(probe.labels)),
        "n_holdout": float(len(labels)),
    }
    meta = {"kind": "personal", "temperature": temperature, "threshold": threshold,
            "base_temperature": base_temperature, "base_data_sha256": base.meta.get("data_sha256"),
            "seed": config.seed, "config": _config_dict(config)}
    checkpoint = Checkpoint(state_dict={k: v.detach().cpu().clone() for k, v in head.items()},
                            config=base.config, metrics=metrics, meta=meta)
    return FinetuneResult(checkpoint, gate_metrics(metrics), metrics)


def _config_dict(config: FinetuneConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    if config.augment is not None:
        values["augment"] = dataclasses.asdict(config.augment)
    return values


def _rejected(base: Checkpoint, current: Checkpoint | None, n_labels: int, reason: str,
              config: FinetuneConfig) -> FinetuneResult:
    start = current.state_dict if current is not None else head_state(base.state_dict)
    metrics = {"n_labels": float(n_labels)}
    meta = {"kind": "personal", "base_data_sha256": base.meta.get("data_sha256"), "seed": config.seed}
    checkpoint = Checkpoint(state_dict=dict(start), config=base.config, metrics=metrics, meta=meta)
    return FinetuneResult(checkpoint, GateDecision(False, reason), metrics)


def finetune_user(base: Checkpoint, images: np.ndarray, labels: np.ndarray, *,
                  current: Checkpoint | None = None, config: FinetuneConfig | None = None,
                  device: str | torch.device | None = None, replay: ReplayBank | None = None,
                  probe: MnistProbe | None = None) -> FinetuneResult:
    """Fine-tune one user's head, calibrate it, and decide whether it should go live.

    images: uint8 (N,28,28) normalised crops (white on black) in labelling order; labels: (N,).
    current: the user's active personal checkpoint (training starts from it; it is what the
    candidate must beat on the held-out samples), or None for the base model.
    device: None picks CUDA when available. replay/probe: None = the MNIST ones, cached per process.
    The result's checkpoint has meta {"kind": "personal", "temperature", "threshold",
    "base_temperature", "base_data_sha256", "seed", "config"} and metrics {heldout_before,
    heldout_after, heldout_personal, heldout_nll_before, heldout_nll_after, mnist_accuracy,
    mnist_base_accuracy, mnist_combined_accuracy, mnist_subset, n_labels, n_train, n_holdout,
    best_step, train_seconds}. Never raises on too few labels: returns a rejected result.
    """
    config = config or FinetuneConfig()
    problem = check_samples(images, labels, config)
    if problem:
        return _rejected(base, current, len(labels), problem, config)
    started = time.perf_counter()
    torch_device = pick_device(device)
    torch.manual_seed(config.seed)
    prepared = prepare_user(images, labels, config)
    replay = replay or cached_replay(base, config.replay_size, torch_device)
    model = base.build().to(torch_device)
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    if current is not None:
        model.load_state_dict(head_state(current.state_dict), strict=False)
    train_features = trunk_features(model, prepared.train_images, torch_device)
    holdout_features = trunk_features(model, prepared.holdout_images, torch_device)
    head, best_step = train_head(model, train_features, prepared, replay, holdout_features, anchor, config)
    seconds = time.perf_counter() - started
    probe = probe or cached_probe(base, config.mnist_subset, torch_device)
    extra = {"n_labels": float(len(labels)), "n_train": float(len(labels) - len(prepared.holdout_labels)),
             "best_step": float(best_step), "train_seconds": seconds}
    return evaluate_candidate(base, current, head, holdout_features, prepared.holdout_labels, probe,
                              extra, config)
