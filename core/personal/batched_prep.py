"""Training material for a batch of users at once, on the training device.

Each user's labelled samples and their augmented copies form one block of a flat "pool"; the
augmentation warps every user's images in one call per copy and the frozen trunk runs once over
the whole pool. Each user trains k+1 models side by side ("members"): k cross-validation folds
(member f trains on the samples outside fold f and reads fold f), then the final model on every
sample. Schedules index the pool; a member's out-of-fold samples are padded to the longest fold
with a 0/1 mask (the final member reads none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.model.augment import AugmentDraw, apply_augment
from core.model.network import DigitNet, normalize
from core.personal.calibrate import trunk_features
from core.personal.finetune_prep import FinetuneConfig, fold_assignment, member_schedule, replay_schedule, user_draws
from core.personal.stacked_head import channels_last

TRUNK_BATCH = 16_384  # images per trunk forward: large batches keep the GPU busy


@dataclass
class BatchMaterial:
    members: int  # models per user: folds + 1 (the final one is the last)
    train_features: torch.Tensor  # (P, 7, 7, C) channels-last pool: each user's block in turn
    train_labels: torch.Tensor  # (P,)
    user_schedule: torch.Tensor  # (U * members, steps, user_batch) indices into the pool
    replay_schedule: torch.Tensor  # (steps, replay_batch), shared by every user
    holdout_features: torch.Tensor  # (U * members, H, 7, 7, C): each member's out-of-fold samples, padded
    holdout_labels: torch.Tensor  # (U * members, H)
    holdout_mask: torch.Tensor  # (U * members, H) 1.0 for real samples
    holdout_position: torch.Tensor  # (U * members, H) the sample's index in the user's labelling order
    n_labels: list[int]


def prepare_batch(net: DigitNet, users: Sequence[tuple[np.ndarray, np.ndarray]], config: FinetuneConfig,
                  device: torch.device, dtype: torch.dtype = torch.float32) -> BatchMaterial:
    """users: (uint8 images (N,28,28), labels (N,)) pairs that passed ``check_samples``."""
    counts = [len(labels) for _, labels in users]
    copies = 1 + (config.augment_copies if config.augment is not None else 0)
    members = config.folds + 1
    images = torch.from_numpy(np.concatenate([np.asarray(i, dtype=np.uint8) for i, _ in users])).to(device)
    labels_np = [np.asarray(lb, dtype=np.int64) for _, lb in users]
    labels = torch.from_numpy(np.concatenate(labels_np)).to(device)
    blocks = np.concatenate([[0], np.cumsum([copies * n for n in counts])[:-1]]).astype(np.int64)

    # the pool: a user's block is [originals, copy 1, ..., copy k], each n_u long
    x = images.float().unsqueeze(1) / 255.0
    pool_x = torch.empty(sum(counts) * copies, 1, 28, 28, device=device)
    pool_y = torch.empty(sum(counts) * copies, dtype=torch.long, device=device)
    first_copy = np.concatenate([b + np.arange(n) for b, n in zip(blocks, counts, strict=True)])
    draws = [user_draws(n, config) for n in counts]
    for copy in range(copies):
        where = torch.from_numpy(first_copy + np.repeat(np.asarray(counts) * copy, counts)).to(device)
        if copy == 0:
            warped = x
        else:
            assert config.augment is not None
            warped = apply_augment(x, AugmentDraw.concat([d[copy - 1] for d in draws]), config.augment)
        pool_x[where] = warped
        pool_y[where] = labels
    pool = channels_last(trunk_features(net, normalize(pool_x), device, batch_size=TRUNK_BATCH)).to(dtype)

    folds = _folds(labels_np, config)
    schedules, held = [], []
    for block, n, fold in zip(blocks, counts, folds, strict=True):
        for member in range(members):
            train = np.arange(n) if member == config.folds else np.flatnonzero(fold != member)
            copy_of, which = np.divmod(member_schedule(len(train), member, config), len(train))
            schedules.append(block + copy_of * n + train[which])
            held.append(np.flatnonzero(fold == member) if member < config.folds else np.empty(0, np.int64))
    longest = max(len(h) for h in held)
    mask = np.zeros((len(held), longest), dtype=np.float32)
    position = np.zeros((len(held), longest), dtype=np.int64)
    for row, h in enumerate(held):
        mask[row, :len(h)] = 1.0
        position[row, :len(h)] = h
    user_of_row = np.repeat(np.arange(len(users)), members)
    pool_index = torch.from_numpy(blocks[user_of_row][:, None] + position).to(device)  # originals
    return BatchMaterial(
        members=members, train_features=pool, train_labels=pool_y,
        user_schedule=torch.from_numpy(np.stack(schedules)).to(device),
        replay_schedule=replay_schedule(config).to(device),
        holdout_features=pool[pool_index], holdout_labels=pool_y[pool_index],
        holdout_mask=torch.from_numpy(mask).to(device), holdout_position=torch.from_numpy(position).to(device),
        n_labels=counts)


def _folds(labels: list[np.ndarray], config: FinetuneConfig) -> list[np.ndarray]:
    """Each user's fold numbers, computed together for users with equal counts."""
    by_count: dict[int, list[int]] = {}
    for position, user_labels in enumerate(labels):
        by_count.setdefault(len(user_labels), []).append(position)
    out: list[np.ndarray] = [np.empty(0, np.int64)] * len(labels)
    for members in by_count.values():
        folds = fold_assignment(np.stack([labels[i] for i in members]), config)
        for row, position in enumerate(members):
            out[position] = folds[row]
    return out
