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

from core.augment import AugmentConfig, augment
from core.calibrate import (
    NEVER_PERSONAL,
    MnistProbe,
    cached_probe,
    calibrated_probabilities,
    choose_threshold,
    combine,
    fingerprint,
    fit_base_temperature,
    fit_temperature,
    head_logits,
    pick_device,
    trunk_features,
)
from core.data import load_mnist
from core.model import FROZEN_PREFIXES, Checkpoint, DigitNet, normalize

# Light augmentation for user samples: the user's style is the signal, so keep it.
LIGHT_AUGMENT = AugmentConfig(rotate_deg=6.0, shift=0.06, scale=(0.93, 1.07), shear=0.08,
                              elastic_alpha=0.3, elastic_p=0.3, thickness_p=0.0)
MNIST_TOLERANCE = 0.003  # the gate's bound on the MNIST test accuracy drop (0.3 points)
REPLAY_POOL = 50_000  # replay draws from MNIST train[:50000]; simulated users from the rest
REPLAY_SEED = 2024


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 60
    user_batch: int = 32  # user samples (augmented copies) per step
    replay_batch: int = 32  # replayed MNIST training samples per step
    lr: float = 1e-3  # Adam, head only
    # Adam's eps well above float noise: at step 0 the distillation gradients are ~0 and a tiny eps
    # would turn their rounding noise into full-size steps
    adam_eps: float = 1e-5
    l2_pull: float = 1e-3  # weight of sum((theta - theta_base)^2)
    distill_temperature: float = 2.0  # replayed samples learn the base's softened outputs
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
    state = dict(base.state_dict)
    if personal is not None:
        state.update(head_state(personal.state_dict))
    return state


def split_holdout(labels: np.ndarray, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): stratified by digit, deterministic for config.seed.

    Each sample's key is (its rank among its digit's samples in a seeded shuffle + 0.5) / that
    digit's count; the lowest keys are held out, so every digit contributes in proportion.
    """
    n = len(labels)
    n_hold = min(max(config.min_holdout, round(config.holdout_fraction * n)), n - 1)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    key = np.empty(n)
    for digit in np.unique(labels):
        members = order[labels[order] == digit]
        key[members] = (np.arange(len(members)) + 0.5) / len(members)
    ranked = sorted(range(n), key=lambda i: (key[i], int(np.where(order == i)[0][0])))
    held = np.sort(np.array(ranked[:n_hold], dtype=np.int64))
    train = np.setdiff1d(np.arange(n), held)
    return train, held


@dataclass
class PreparedUser:
    """A user's samples turned into training material (shared by the one-user and batched paths)."""

    train_images: torch.Tensor  # normalised (M,1,28,28): originals then augmented copies
    train_labels: torch.Tensor  # (M,)
    holdout_images: torch.Tensor  # normalised (H,1,28,28)
    holdout_labels: torch.Tensor  # (H,)
    user_schedule: torch.Tensor  # (steps, user_batch) indices into train_images
    replay_schedule: torch.Tensor  # (steps, replay_batch) indices into the replay bank
    n_labels: int


def prepare_user(images: np.ndarray, labels: np.ndarray, config: FinetuneConfig) -> PreparedUser:
    generator = torch.Generator().manual_seed(config.seed)
    train_idx, held_idx = split_holdout(labels, config)
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.uint8).float().unsqueeze(1) / 255.0
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    train_x, train_y = x[train_idx], y[train_idx]
    copies = [train_x]
    if config.augment is not None:
        copies += [augment(train_x, config.augment, generator) for _ in range(config.augment_copies)]
    all_x = torch.cat(copies)
    all_y = train_y.repeat(len(copies))
    user_schedule = torch.randint(len(all_x), (config.steps, config.user_batch), generator=generator)
    replay_schedule = torch.randint(config.replay_size, (config.steps, config.replay_batch),
                                    generator=generator)
    return PreparedUser(normalize(all_x), all_y, normalize(x[held_idx]), y[held_idx],
                        user_schedule, replay_schedule, len(labels))


class ReplayBank:
    """Fixed MNIST training samples (from the first 50,000; simulated users use the rest) with
    their frozen-trunk features, shared by every user of the same base model."""

    def __init__(self, base: Checkpoint, size: int, device: torch.device, data_dir: str | None = None,
                 samples: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """``samples`` (uint8 images (size,28,28), labels) replaces the MNIST draw (tests)."""
        if samples is None:
            images, labels = load_mnist(train=True, directory=data_dir)
            index = torch.randperm(REPLAY_POOL, generator=torch.Generator().manual_seed(REPLAY_SEED))[:size]
            samples = (images[index], labels[index])
        if len(samples[1]) != size:
            raise ValueError(f"replay bank needs {size} samples, got {len(samples[1])}")
        model = base.build().to(device)
        self.labels = samples[1].to(device)
        self.features = trunk_features(model, samples[0], device)
        self.base_logits = head_logits(model, self.features)  # distillation targets


_BANKS: dict[tuple[object, ...], ReplayBank] = {}


def cached_replay(base: Checkpoint, size: int, device: torch.device) -> ReplayBank:
    key = (fingerprint(base), size, str(device))
    if key not in _BANKS:
        _BANKS[key] = ReplayBank(base, size, device)
    return _BANKS[key]


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


def check_samples(images: np.ndarray, labels: np.ndarray, config: FinetuneConfig) -> str | None:
    """A reason not to train (bad shapes, labels out of range, too few samples), or None."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        return f"bad samples: expected (N,28,28) images and N labels, got {images.shape} and {labels.shape}"
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        return "bad samples: labels must be digits 0-9"
    if len(labels) < max(config.min_labels, config.min_holdout + 1):
        return f"too few labelled samples ({len(labels)} < {max(config.min_labels, config.min_holdout + 1)})"
    return None


def gate(*, heldout_before: float, heldout_after: float, mnist_base: float, mnist_candidate: float,
         heldout_nll_before: float | None = None, heldout_nll_after: float | None = None,
         tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """Pure promotion rule.

    Promote only if the candidate beats the current model on the user's held-out samples
    (higher accuracy, or equal accuracy and a lower calibrated NLL when both are given) AND its
    MNIST test accuracy is at least ``mnist_base - tolerance``. Otherwise reject with a reason.
    """
    drop_points = 100 * (mnist_base - mnist_candidate)
    mnist_text = f"MNIST {mnist_candidate:.2%} vs base {mnist_base:.2%}"
    heldout_text = f"held-out accuracy {heldout_before:.1%} -> {heldout_after:.1%}"
    if mnist_candidate < mnist_base - tolerance - 1e-12:
        return GateDecision(False, f"rejected: {mnist_text} drops {drop_points:.2f} points "
                                   f"(bound {100 * tolerance:.1f}); {heldout_text}")
    if heldout_after > heldout_before + 1e-12:
        return GateDecision(True, f"promoted: {heldout_text}; {mnist_text}")
    nll_better = (heldout_nll_before is not None and heldout_nll_after is not None
                  and heldout_nll_after < heldout_nll_before - 1e-9)
    if abs(heldout_after - heldout_before) <= 1e-12 and nll_better:
        return GateDecision(True, f"promoted: {heldout_text}, held-out NLL {heldout_nll_before:.3f} -> "
                                  f"{heldout_nll_after:.3f}; {mnist_text}")
    return GateDecision(False, f"rejected: not better on the held-out samples ({heldout_text}); {mnist_text}")


def gate_metrics(metrics: dict[str, Any], tolerance: float = MNIST_TOLERANCE) -> GateDecision:
    """``gate`` applied to a result's metrics dict (the keys ``finetune_user`` writes)."""
    return gate(heldout_before=metrics["heldout_before"], heldout_after=metrics["heldout_after"],
                mnist_base=metrics["mnist_base_accuracy"], mnist_candidate=metrics["mnist_accuracy"],
                heldout_nll_before=metrics.get("heldout_nll_before"),
                heldout_nll_after=metrics.get("heldout_nll_after"), tolerance=tolerance)
