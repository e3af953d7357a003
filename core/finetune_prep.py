"""Fine-tuning configuration and training material: the hold-out split, augmented user samples,
the step schedule, and the replay bank of MNIST training digits (shared by the one-user and the
batched paths, so both see exactly the same data in the same order)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from core.augment import AugmentConfig, AugmentDraw, apply_augment, draw_augment
from core.calibrate import fingerprint, head_logits, trunk_features
from core.data import load_mnist
from core.model import Checkpoint, normalize

# Light augmentation for user samples: the user's style is the signal, so keep it.
LIGHT_AUGMENT = AugmentConfig(rotate_deg=6.0, shift=0.06, scale=(0.93, 1.07), shear=0.08,
                              elastic_alpha=0.3, elastic_p=0.3, thickness_p=0.0)
REPLAY_POOL = 50_000  # replay draws from MNIST train[:50000]; simulated users from the rest
REPLAY_SEED = 2024
REPLAY_SCHEDULE_SEED_OFFSET = 7919  # the replay schedule's generator is seeded apart from the users'


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


def split_holdout(labels: np.ndarray, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): stratified by digit, deterministic for config.seed.

    Each sample's key is (its rank among its digit's samples in a seeded shuffle + 0.5) / that
    digit's count; the lowest keys are held out, so every digit contributes in proportion.
    """
    train, held = split_holdout_many(np.asarray(labels)[None, :], config)
    return train[0], held[0]


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


def split_holdout_many(labels: np.ndarray, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """``split_holdout`` for U users with the same number of labels at once: labels (U, n) ->
    (train (U, n - H), held (U, H)) index arrays, one row per user."""
    users, n = labels.shape
    n_hold = min(max(config.min_holdout, round(config.holdout_fraction * n)), n - 1)
    order = np.random.default_rng(config.seed).permutation(n)
    shuffled = labels[:, order]
    key = np.empty((users, n))  # key of the sample at each shuffled position
    for digit in range(10):
        members = shuffled == digit
        count = np.maximum(members.sum(axis=1, keepdims=True), 1)
        key = np.where(members, (np.cumsum(members, axis=1) - 1 + 0.5) / count, key)
    ranked = order[np.argsort(key, axis=1, kind="stable")]  # by key, ties by shuffled position
    held = np.sort(ranked[:, :n_hold], axis=1)
    in_held = np.zeros((users, n), dtype=bool)
    np.put_along_axis(in_held, held, True, axis=1)
    train = np.nonzero(~in_held)[1].reshape(users, n - n_hold)
    return train.astype(np.int64), held.astype(np.int64)


@functools.lru_cache(maxsize=256)
def user_draws(n_train: int, config: FinetuneConfig) -> tuple[tuple[AugmentDraw, ...], torch.Tensor]:
    """The augmentation draws and the user-sample schedule for a user with ``n_train`` training
    samples: they depend only on the count and the seed, so users with equal counts share them."""
    generator = torch.Generator().manual_seed(config.seed)
    draws = tuple(draw_augment(n_train, config.augment, generator) for _ in range(config.augment_copies)
                  ) if config.augment is not None else ()
    user_schedule = torch.randint(n_train * (1 + len(draws)), (config.steps, config.user_batch),
                                  generator=generator)
    return draws, user_schedule


@functools.lru_cache(maxsize=16)
def replay_schedule(config: FinetuneConfig) -> torch.Tensor:
    """(steps, replay_batch) indices into the replay bank: the same for every user, so a batch of
    users can run the replayed half of each step as one shared matrix product."""
    generator = torch.Generator().manual_seed(config.seed + REPLAY_SCHEDULE_SEED_OFFSET)
    return torch.randint(config.replay_size, (config.steps, config.replay_batch), generator=generator)


def prepare_user(images: np.ndarray, labels: np.ndarray, config: FinetuneConfig) -> PreparedUser:
    train_idx, held_idx = split_holdout(labels, config)
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.uint8).float().unsqueeze(1) / 255.0
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    train_x, train_y = x[train_idx], y[train_idx]
    draws, user_schedule = user_draws(len(train_idx), config)
    copies = [train_x] + [apply_augment(train_x, draw, config.augment) for draw in draws
                          if config.augment is not None]
    all_x = torch.cat(copies)
    all_y = train_y.repeat(len(copies))
    return PreparedUser(normalize(all_x), all_y, normalize(x[held_idx]), y[held_idx],
                        user_schedule, replay_schedule(config), len(labels))


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
