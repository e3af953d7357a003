"""Many users fine-tuned at once: the frozen trunk runs once over all users' samples, the per-user
heads are stacked along a leading user axis and trained together (torch.func.functional_call +
vmap), in chunks of users that fit in memory. Same recipe, schedule and randomness per user as
``core.finetune.finetune_user``, so results match the one-user path within float tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from core.calibrate import MnistProbe, cached_probe, pick_device, trunk_features
from core.finetune import (
    FinetuneConfig,
    FinetuneResult,
    PreparedUser,
    ReplayBank,
    _rejected,
    cached_replay,
    check_samples,
    evaluate_candidate,
    head_state,
    mixed_loss,
    prepare_user,
)
from core.model import FROZEN_PREFIXES, Checkpoint, DigitNet

PROBE_PAIRS = 32_768  # (user, probe sample) pairs evaluated at once


@dataclass
class UserSamples:
    images: np.ndarray  # uint8 (N,28,28), labelling order
    labels: np.ndarray  # int64 (N,)
    current: Checkpoint | None = None  # the user's active personal checkpoint, if any


class _Head(nn.Module):
    """DigitNet.head as a module's forward, so functional_call can run it with swapped weights."""

    def __init__(self, net: DigitNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features)


def finetune_users(base: Checkpoint, users: Sequence[UserSamples], *,
                   config: FinetuneConfig | None = None, device: str | torch.device | None = None,
                   chunk_size: int | None = None, replay: ReplayBank | None = None,
                   probe: MnistProbe | None = None) -> list[FinetuneResult]:
    """One ``FinetuneResult`` per user, in order (each with its own gate decision).

    device None picks CUDA when available; ``chunk_size`` users are trained together at a time
    (None: 256 on CUDA, 32 on CPU; each user holds ~5 MB of trunk features at 100 labels).
    """
    config = config or FinetuneConfig()
    torch_device = pick_device(device)
    chunk_size = chunk_size or (256 if torch_device.type == "cuda" else 32)
    results: list[FinetuneResult | None] = [None] * len(users)
    valid = []
    for index, user in enumerate(users):
        problem = check_samples(user.images, user.labels, config)
        if problem:
            results[index] = _rejected(base, user.current, len(user.labels), problem, config)
        else:
            valid.append(index)
    if valid:
        replay = replay or cached_replay(base, config.replay_size, torch_device)
        probe = probe or cached_probe(base, config.mnist_subset, torch_device)
        for start in range(0, len(valid), chunk_size):
            chunk = valid[start:start + chunk_size]
            chunk_results = _finetune_chunk(base, [users[i] for i in chunk], replay, probe, config,
                                            torch_device)
            for index, result in zip(chunk, chunk_results, strict=True):
                results[index] = result
    return [r for r in results if r is not None]


def _stack_heads(base: Checkpoint, users: Sequence[UserSamples], names: list[str],
                 device: torch.device) -> dict[str, torch.Tensor]:
    stacked = {}
    for name in names:
        per_user = [(u.current.state_dict if u.current is not None else base.state_dict).get(
            name, base.state_dict[name]) for u in users]
        stacked[name] = torch.stack([p.to(device, torch.float32) for p in per_user]).requires_grad_(True)
    return stacked


def _finetune_chunk(base: Checkpoint, users: Sequence[UserSamples], replay: ReplayBank, probe: MnistProbe,
                    config: FinetuneConfig, device: torch.device) -> list[FinetuneResult]:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    prepared = [prepare_user(u.images, u.labels, config) for u in users]
    net = base.build().to(device)
    head_module = _Head(net)
    names = [n for n, _ in net.named_parameters() if not n.startswith(FROZEN_PREFIXES)]
    buffers = {f"net.{n}": b for n, b in net.named_buffers()}
    anchor = {n: p.detach().clone() for n, p in net.named_parameters() if n in names}
    params = _stack_heads(base, users, names, device)

    def head_fn(user_params: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        weights = {f"net.{n}": p for n, p in user_params.items()}
        return functional_call(head_module, (weights, buffers), (features,))

    batched_head = vmap(head_fn, in_dims=(0, 0))

    # The trunk runs once over every user's training and held-out samples.
    train_sizes = [len(p.train_images) for p in prepared]
    features = trunk_features(net, torch.cat([p.train_images for p in prepared]), device)
    train_labels = torch.cat([p.train_labels for p in prepared]).to(device)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(train_sizes)[:-1]]), device=device)
    user_schedule = torch.stack([p.user_schedule for p in prepared]).to(device) + offsets[:, None, None]
    replay_schedule = torch.stack([p.replay_schedule for p in prepared]).to(device)
    holdout, holdout_labels, holdout_mask = _padded_holdout(net, prepared, device)

    def holdout_losses() -> torch.Tensor:
        with torch.no_grad():
            logits = batched_head(params, holdout)  # (U, Hmax, 10)
            losses = F.cross_entropy(logits.flatten(0, 1), holdout_labels.flatten(), reduction="none")
            losses = losses.view(holdout_mask.shape) * holdout_mask
            return losses.sum(1) / holdout_mask.sum(1)

    optimizer = torch.optim.Adam(params.values(), lr=config.lr, eps=config.adam_eps)
    best_loss = holdout_losses()
    best_step = torch.zeros(len(users), dtype=torch.long, device=device)
    best = {n: p.detach().clone() for n, p in params.items()}
    for step in range(config.steps):
        u, r = user_schedule[:, step], replay_schedule[:, step]
        x = torch.cat([features[u], replay.features[r]], dim=1)  # (U, B, C, 7, 7)
        logits = batched_head(params, x)
        # sum of the users' mean losses: each user's gradient is exactly its one-user gradient
        loss = mixed_loss(logits, train_labels[u], replay.base_logits[r], config)
        pull = sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())
        optimizer.zero_grad(set_to_none=True)
        (loss + config.l2_pull * pull).backward()
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            current = holdout_losses()
            better = current < best_loss
            best_loss = torch.where(better, current, best_loss)
            best_step = torch.where(better, torch.full_like(best_step, step + 1), best_step)
            for name, value in params.items():
                mask = better.view(-1, *([1] * (value.dim() - 1)))
                best[name] = torch.where(mask, value.detach(), best[name])
    seconds = (time.perf_counter() - started) / len(users)

    # the MNIST probe for all users, a few users at a time: conv3 activations cost 25 KB per
    # (user, sample), so the slices stay around PROBE_PAIRS pairs
    step_users = max(1, PROBE_PAIRS // max(len(probe.labels), 1))
    with torch.no_grad():
        mnist_logits = torch.cat([
            vmap(head_fn, in_dims=(0, None))({n: p[i:i + step_users] for n, p in best.items()}, probe.features)
            for i in range(0, len(users), step_users)])  # (U, N, 10)
    results = []
    buffers_state = {n: b for n, b in net.state_dict().items() if n.startswith(("bn3.",)) and
                     n not in names}
    for index, (user, prep) in enumerate(zip(users, prepared, strict=True)):
        head = {n: best[n][index].detach() for n in names} | head_state(buffers_state)
        hold = holdout[index][holdout_mask[index].bool()]
        extra = {"n_labels": float(prep.n_labels), "n_train": float(prep.n_labels - len(prep.holdout_labels)),
                 "best_step": float(best_step[index]), "train_seconds": seconds}
        results.append(evaluate_candidate(base, user.current, head, hold, prep.holdout_labels, probe, extra,
                                          config, mnist_logits=mnist_logits[index]))
    return results


def _padded_holdout(net: DigitNet, prepared: Sequence[PreparedUser],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out features (U, Hmax, C, 7, 7), labels (U, Hmax) and a 0/1 mask, from one trunk pass."""
    sizes = [len(p.holdout_images) for p in prepared]
    flat = trunk_features(net, torch.cat([p.holdout_images for p in prepared]), device)
    longest = max(sizes)
    holdout = flat.new_zeros(len(prepared), longest, *flat.shape[1:])
    labels = torch.zeros(len(prepared), longest, dtype=torch.long, device=device)
    mask = torch.zeros(len(prepared), longest, device=device)
    position = 0
    for index, (size, prep) in enumerate(zip(sizes, prepared, strict=True)):
        holdout[index, :size] = flat[position:position + size]
        labels[index, :size] = prep.holdout_labels.to(device)
        mask[index, :size] = 1
        position += size
    return holdout, labels, mask
