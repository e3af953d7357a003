"""Many users fine-tuned at once (the GPU worker's path).

Same recipe, data, schedules and gate as ``core.finetune.finetune_user``, computed for a chunk of
users together: the frozen trunk runs once over every user's samples (core.batched_prep), the
users' heads are stacked along a leading axis and trained together with plain batched matrix
products (core.stacked_head; the replayed MNIST half of each step is shared by all users), and
calibration and gating run on (users, ...) tensors (core.batched_calibrate). On CUDA the step runs
in bfloat16 autocast (float32 weights and optimiser) and is compiled with torch.compile; on the
CPU it runs in float32 and matches the one-user path within float rounding (tests/core).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from core.batched_calibrate import choose_thresholds, combine_batched, fit_temperatures
from core.batched_prep import BatchMaterial, prepare_batch
from core.calibrate import NEVER_PERSONAL, MnistProbe, cached_probe, fit_base_temperature, pick_device
from core.finetune import (
    FinetuneConfig,
    FinetuneResult,
    ReplayBank,
    _config_dict,
    _rejected,
    cached_replay,
    check_samples,
    gate_metrics,
    mixed_loss,
)
from core.model import FROZEN_PREFIXES, Checkpoint, head_state
from core.stacked_head import StackedHead, channels_last, stack_states

PROBE_PAIRS = {"cuda": 131_072, "cpu": 32_768}  # (user, probe sample) pairs evaluated at once


@dataclass
class UserSamples:
    images: np.ndarray  # uint8 (N,28,28), labelling order
    labels: np.ndarray  # int64 (N,)
    current: Checkpoint | None = None  # the user's active personal checkpoint, if any


def finetune_users(base: Checkpoint, users: Sequence[UserSamples], *,
                   config: FinetuneConfig | None = None, device: str | torch.device | None = None,
                   chunk_size: int | None = None, replay: ReplayBank | None = None,
                   probe: MnistProbe | None = None, bf16: bool | None = None,
                   compile_step: bool | None = None, timings: dict[str, float] | None = None) -> list[FinetuneResult]:
    """One ``FinetuneResult`` per user, in order (each with its own gate decision).

    device None picks CUDA when available; ``chunk_size`` users are trained together (None: 2048
    on CUDA, 32 on CPU). bf16 / compile_step None: on for CUDA, off for the CPU. ``timings``: a
    dict to add seconds per phase to (train, evaluate, and the overlapped prepare and package
    threads; synchronises the device).
    """
    config = config or FinetuneConfig()
    torch_device = pick_device(device)
    cuda = torch_device.type == "cuda"
    chunk_size = chunk_size or (2048 if cuda else 32)
    trainer = _ChunkTrainer(base, config, torch_device, cuda if bf16 is None else bf16,
                            cuda if compile_step is None else compile_step, timings)
    results: list[FinetuneResult | None] = [None] * len(users)
    valid = []
    for index, user in enumerate(users):
        problem = check_samples(user.images, user.labels, config)
        if problem:
            results[index] = _rejected(base, user.current, len(user.labels), problem, config)
        else:
            valid.append(index)
    if valid:
        trainer.replay = replay or cached_replay(base, config.replay_size, torch_device)
        trainer.probe = probe or cached_probe(base, config.mnist_subset, torch_device)
        chunks = [valid[start:start + chunk_size] for start in range(0, len(valid), chunk_size)]
        # Three stages overlap: the next chunk is prepared on one thread and the last chunk's results
        # are unpacked into per-user checkpoints on another while the GPU trains this chunk (all
        # device work goes to one stream, so its order is the order it was issued in).
        with ThreadPoolExecutor(max_workers=1) as preparer, ThreadPoolExecutor(max_workers=1) as packer:
            pending = []
            upcoming = preparer.submit(trainer.prepare, [users[i] for i in chunks[0]])
            for number, chunk in enumerate(chunks):
                material = upcoming.result()
                if number + 1 < len(chunks):
                    upcoming = preparer.submit(trainer.prepare, [users[i] for i in chunks[number + 1]])
                pending.append((chunk, packer.submit(trainer.run([users[i] for i in chunk], material))))
            for chunk, future in pending:
                for index, result in zip(chunk, future.result(), strict=True):
                    results[index] = result
    return [r for r in results if r is not None]


class _ChunkTrainer:
    def __init__(self, base: Checkpoint, config: FinetuneConfig, device: torch.device, bf16: bool,
                 compile_step: bool, timings: dict[str, float] | None = None) -> None:
        self.base, self.config, self.device = base, config, device
        self.timings = timings
        self._mark = time.perf_counter()
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.net = base.build().to(device).eval()
        self.head = StackedHead(self.net)
        self.names = [n for n, _ in self.net.named_parameters() if not n.startswith(FROZEN_PREFIXES)]
        self.anchor = {n: p.detach().float() for n, p in self.net.named_parameters() if n in self.names}
        self.buffers = {n: b.detach().cpu() for n, b in head_state(self.net.state_dict()).items()
                        if n not in self.names}  # bn3 running statistics: frozen, copied as they are
        self.replay: ReplayBank | None = None
        self.probe: MnistProbe | None = None
        self.step_loss = torch.compile(self._step_loss) if compile_step else self._step_loss

    def _phase(self, name: str) -> None:
        """Add the time since the last mark to ``timings[name]`` (only when timings are asked for)."""
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._mark
        self._mark = now

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def _step_loss(self, params: dict[str, torch.Tensor], own: torch.Tensor, shared: torch.Tensor,
                   user_labels: torch.Tensor, replay_logits: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = self.head.logits(params, own, shared)
        # sum of the users' mean losses: each user's gradient is exactly its one-user gradient
        loss = mixed_loss(logits.float(), user_labels, replay_logits, self.config)
        pull = sum(((p - self.anchor[n]) ** 2).sum() for n, p in params.items())
        return loss + self.config.l2_pull * pull

    def _logits(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self.head.logits(params, own, shared).float()

    def prepare(self, users: Sequence[UserSamples]) -> BatchMaterial:
        started = time.perf_counter()
        with self._autocast():  # the frozen trunk too
            material = prepare_batch(self.net, [(u.images, u.labels) for u in users], self.config, self.device,
                                     self.dtype)
        if self.timings is not None:
            key = "prepare (thread, overlapped)"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started
        return material

    def run(self, users: Sequence[UserSamples], material: BatchMaterial) -> Callable[[], list[FinetuneResult]]:
        """Train and evaluate a chunk on the device; returns the CPU work that packages the results."""
        assert self.replay is not None
        started = time.perf_counter()
        self._phase("waiting for preparation")
        config = self.config
        starts = [{**self.anchor, **(head_state(u.current.state_dict) if u.current is not None else {})}
                  for u in users]
        params = {n: p.requires_grad_(True) for n, p in stack_states(starts, self.names, self.device).items()}
        replay_features = channels_last(self.replay.features).to(self.dtype)

        def holdout_losses() -> torch.Tensor:
            logits = self._logits(params, material.holdout_features)
            losses = F.cross_entropy(logits.flatten(0, 1), material.holdout_labels.flatten(), reduction="none")
            mask = material.holdout_mask
            return (losses.view(mask.shape) * mask).sum(1) / mask.sum(1)

        # fused: one kernel for every stacked tensor's update (CUDA); the same arithmetic as Adam
        optimizer = torch.optim.Adam(params.values(), lr=config.lr, eps=config.adam_eps,
                                     fused=self.device.type == "cuda")
        best_loss = holdout_losses()
        best_step = torch.zeros(len(users), dtype=torch.long, device=self.device)
        best = {n: p.detach().clone() for n, p in params.items()}
        for step in range(config.steps):
            u, r = material.user_schedule[:, step], material.replay_schedule[step]
            loss = self.step_loss(params, material.train_features[u], replay_features[r],
                                  material.train_labels[u], self.replay.base_logits[r])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
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
        self._phase("train")
        return self._evaluate(users, material, best, best_step, seconds)

    def _probe_logits(self, best: dict[str, torch.Tensor]) -> torch.Tensor:
        """(U, N, 10) logits on the MNIST probe, a slice of users at a time to bound memory."""
        assert self.probe is not None
        features = channels_last(self.probe.features).to(self.dtype)
        users = next(iter(best.values())).shape[0]
        step = max(1, PROBE_PAIRS.get(self.device.type, 32_768) // max(len(self.probe.labels), 1))
        return torch.cat([self._logits({n: p[i:i + step] for n, p in best.items()}, None, features)
                          for i in range(0, users, step)])

    def _evaluate(self, users: Sequence[UserSamples], material: BatchMaterial, best: dict[str, torch.Tensor],
                  best_step: torch.Tensor, seconds: float) -> Callable[[], list[FinetuneResult]]:
        """Calibrate every user's candidate, measure it against what they are served now, gate it."""
        assert self.probe is not None
        probe, mask, labels = self.probe, material.holdout_mask, material.holdout_labels
        count, held = len(users), material.holdout_features
        base_t = fit_base_temperature(self.base, probe)
        base_params = {n: p[None] for n, p in self.anchor.items()}
        base_logits = self._logits(base_params, held.reshape(1, -1, *held.shape[2:])).view(count, -1, 10)
        base_probs = torch.softmax(base_logits / base_t, dim=-1)
        before_probs = self._served_probs(users, held, base_probs)
        candidate_logits = self._logits(best, held)
        mnist_logits = self._probe_logits(best)
        n_probe = len(probe.labels)
        # half the weight on the user's held-out samples, half on the MNIST probe (as finetune_user)
        weights = torch.cat([0.5 * mask / mask.sum(1, keepdim=True),
                             torch.full((count, n_probe), 0.5 / n_probe, device=self.device)], dim=1)
        mnist_labels = probe.labels.expand(count, n_probe)
        temperature = fit_temperatures(torch.cat([candidate_logits, mnist_logits], 1),
                                       torch.cat([labels, mnist_labels], 1), weights)
        candidate_probs = torch.softmax(candidate_logits / temperature[:, None, None], dim=-1)
        mnist_probs = torch.softmax(mnist_logits / temperature[:, None, None], dim=-1)
        mnist_base_probs = torch.softmax(probe.base_logits.float() / base_t, dim=-1)
        threshold = choose_thresholds(candidate_probs, base_probs, labels, mask, mnist_probs, mnist_base_probs,
                                      probe.labels)
        after_probs = combine_batched(candidate_probs, base_probs, threshold)
        mnist_combined = combine_batched(mnist_probs, mnist_base_probs.expand_as(mnist_probs), threshold)

        def accuracy(probs: torch.Tensor) -> torch.Tensor:
            return ((probs.argmax(-1) == labels).float() * mask).sum(1) / mask.sum(1)

        def nll(probs: torch.Tensor) -> torch.Tensor:
            right = probs.gather(-1, labels[..., None]).squeeze(-1).clamp_min(1e-12)
            return -(right.log() * mask).sum(1) / mask.sum(1)

        columns = {
            "heldout_before": accuracy(before_probs), "heldout_after": accuracy(after_probs),
            "heldout_personal": accuracy(candidate_probs),
            "heldout_nll_before": nll(before_probs), "heldout_nll_after": nll(after_probs),
            "mnist_accuracy": (mnist_logits.argmax(-1) == mnist_labels).float().mean(1),
            "mnist_combined_accuracy": (mnist_combined.argmax(-1) == mnist_labels).float().mean(1),
            "best_step": best_step.float(), "temperature": temperature, "threshold": threshold,
        }
        table = dict(zip(columns, torch.stack(list(columns.values())).cpu().tolist(), strict=True))
        host = _to_host(torch.cat([best[n].detach().float().flatten(1) for n in self.names], dim=1))
        shared = {"mnist_base_accuracy": probe.accuracy(), "mnist_subset": float(n_probe), "train_seconds": seconds}
        self._phase("evaluate")
        return functools.partial(self._package, material.n_labels, material.holdout_sizes, table, host, shared,
                                 base_t)

    def _package(self, n_labels_list: list[int], holdout_sizes: list[int], table: dict[str, list[float]],
                 host: torch.Tensor, shared: dict[str, float], base_t: float) -> list[FinetuneResult]:
        started = time.perf_counter()
        shapes = [self.anchor[n].shape for n in self.names]
        sizes = [int(np.prod(s)) for s in shapes]
        config_dict = _config_dict(self.config)
        results = []
        for i, n_labels in enumerate(n_labels_list):
            # one storage per user (a view of ``host`` would save the whole chunk with the checkpoint)
            own = host[i].clone()
            state = {n: part.view(shape) for n, part, shape in zip(self.names, own.split(sizes), shapes, strict=True)}
            state |= {n: b.clone() for n, b in self.buffers.items()}
            n_hold = holdout_sizes[i]
            metrics = {"n_labels": float(n_labels), "n_train": float(n_labels - n_hold), "n_holdout": float(n_hold),
                       **{k: v[i] for k, v in table.items() if k not in ("temperature", "threshold")}, **shared}
            meta = {"kind": "personal", "temperature": table["temperature"][i], "threshold": table["threshold"][i],
                    "base_temperature": base_t, "base_data_sha256": self.base.meta.get("data_sha256"),
                    "seed": self.config.seed, "config": dict(config_dict)}
            checkpoint = Checkpoint(state_dict=state, config=self.base.config, metrics=metrics, meta=meta)
            results.append(FinetuneResult(checkpoint, gate_metrics(metrics), metrics))
        if self.timings is not None:
            key = "package (CPU thread, overlapped)"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started
        return results

    def _served_probs(self, users: Sequence[UserSamples], held: torch.Tensor,
                      base_probs: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of what each user is served now (base, or current personal + fallback)."""
        current = {i: u.current for i, u in enumerate(users) if u.current is not None}
        if not current:
            return base_probs
        returning = list(current)
        states = [{**self.anchor, **head_state(c.state_dict)} for c in current.values()]
        logits = self._logits(stack_states(states, self.names, self.device), held[returning])
        temperature = torch.tensor([float(c.meta.get("temperature", 1.0)) for c in current.values()],
                                   device=self.device)
        threshold = torch.tensor([float(c.meta.get("threshold", NEVER_PERSONAL)) for c in current.values()],
                                 device=self.device)
        probs = base_probs.clone()
        index = torch.tensor(returning, device=self.device)
        probs[index] = combine_batched(torch.softmax(logits / temperature[:, None, None], dim=-1),
                                       base_probs[index], threshold)
        return probs


def _to_host(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy; from CUDA through pinned memory (several times faster than pageable)."""
    if value.device.type != "cuda":
        return value.cpu()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    torch.cuda.synchronize(value.device)
    return host
