"""Training material for a batch of users at once, on the training device.

Exactly what ``core.finetune_prep.prepare_user`` builds for each user (same hold-out split, same
augmentation draws, same schedules), but the augmentation warps every user's images in one call
per copy and the frozen trunk runs once over all of them. Per-user tensors are concatenated
("flat") with offsets; held-out sets are padded to the longest with a 0/1 mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.augment import AugmentDraw, apply_augment
from core.calibrate import trunk_features
from core.finetune_prep import FinetuneConfig, replay_schedule, split_holdout_many, user_draws
from core.model import DigitNet, normalize
from core.stacked_head import channels_last

TRUNK_BATCH = 16_384  # images per trunk forward: large batches keep the GPU busy


@dataclass
class BatchMaterial:
    train_features: torch.Tensor  # (sum M_u, 7, 7, C) channels-last, every user's block in turn
    train_labels: torch.Tensor  # (sum M_u,)
    user_schedule: torch.Tensor  # (U, steps, user_batch) indices into the flat tensors
    replay_schedule: torch.Tensor  # (steps, replay_batch), shared by every user
    holdout_features: torch.Tensor  # (U, H, 7, 7, C), zero padded
    holdout_labels: torch.Tensor  # (U, H)
    holdout_mask: torch.Tensor  # (U, H) 1.0 for real samples
    holdout_sizes: list[int]
    n_labels: list[int]


def prepare_batch(net: DigitNet, users: Sequence[tuple[np.ndarray, np.ndarray]], config: FinetuneConfig,
                  device: torch.device, dtype: torch.dtype = torch.float32) -> BatchMaterial:
    """users: (uint8 images (N,28,28), labels (N,)) pairs that passed ``check_samples``."""
    # per-user work stays in numpy; each tensor crosses to the device once
    splits = _splits([np.asarray(labels) for _, labels in users], config)
    images = torch.from_numpy(np.concatenate([np.asarray(i, dtype=np.uint8) for i, _ in users])).to(device)
    labels = torch.from_numpy(np.concatenate([np.asarray(lb, dtype=np.int64) for _, lb in users])).to(device)
    starts = np.concatenate([[0], np.cumsum([len(lb) for _, lb in users])[:-1]])
    train_index = torch.from_numpy(np.concatenate([s + t for s, (t, _) in zip(starts, splits, strict=True)])).to(device)
    n_train = [len(t) for t, _ in splits]
    draws = [user_draws(n, config) for n in n_train]
    copies = 1 + len(draws[0][0])

    train_x = images[train_index].float().unsqueeze(1) / 255.0  # (sum n_u, 1, 28, 28)
    train_y = labels[train_index]
    # a user's block is [originals, copy 1, ..., copy k], each n_u long, as in prepare_user
    block_starts = np.concatenate([[0], np.cumsum([copies * n for n in n_train])[:-1]])
    flat_x = torch.empty(sum(n_train) * copies, 1, 28, 28, device=device)
    flat_y = torch.empty(sum(n_train) * copies, dtype=torch.long, device=device)
    same_count = len(set(n_train)) == 1
    first_copy = np.concatenate([b + np.arange(n) for b, n in zip(block_starts, n_train, strict=True)])
    for copy in range(copies):
        where = torch.from_numpy(first_copy + np.repeat(np.asarray(n_train) * copy, n_train)).to(device)
        if copy == 0:
            x = train_x
        else:
            assert config.augment is not None
            draw = (draws[0][0][copy - 1].repeat(len(users)) if same_count
                    else AugmentDraw.concat([d[copy - 1] for d, _ in draws]))
            x = apply_augment(train_x, draw, config.augment)
        flat_x[where] = x
        flat_y[where] = train_y
    offsets = torch.as_tensor(block_starts, device=device)[:, None, None]
    schedule = torch.stack([s for _, s in draws]).to(device) + offsets

    sizes = [len(h) for _, h in splits]
    longest = max(sizes)
    padded = np.stack([s + np.concatenate([h, np.repeat(h[:1], longest - len(h))])
                       for s, (_, h) in zip(starts, splits, strict=True)])
    padded_index = torch.from_numpy(padded).to(device)
    mask = (torch.arange(longest, device=device)[None, :] < torch.tensor(sizes, device=device)[:, None]).float()
    held_x = normalize(images[padded_index.flatten()])
    held_features = channels_last(trunk_features(net, held_x, device, batch_size=TRUNK_BATCH)).to(dtype)
    return BatchMaterial(
        train_features=channels_last(trunk_features(net, normalize(flat_x), device, batch_size=TRUNK_BATCH)).to(dtype),
        train_labels=flat_y, user_schedule=schedule, replay_schedule=replay_schedule(config).to(device),
        holdout_features=held_features.view(len(users), longest, *held_features.shape[1:]),
        holdout_labels=labels[padded_index] * mask.long(), holdout_mask=mask, holdout_sizes=sizes,
        n_labels=[len(lb) for _, lb in users])


def _splits(labels: list[np.ndarray], config: FinetuneConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's (train, held-out) indices, computed together for users with equal counts."""
    by_count: dict[int, list[int]] = {}
    for position, user_labels in enumerate(labels):
        by_count.setdefault(len(user_labels), []).append(position)
    splits: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.int64))] * len(labels)
    for members in by_count.values():
        train, held = split_holdout_many(np.stack([labels[i] for i in members]), config)
        for row, position in enumerate(members):
            splits[position] = (train[row], held[row])
    return splits
