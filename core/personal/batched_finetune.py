"""Fine-tuning: one user or many at once, the only training path (issue 12).

``finetune_user`` (core.personal.finetune) is ``finetune_users`` with a batch of one. The frozen trunk runs
once over every user's samples and their augmented copies (core.personal.batched_prep); each user trains
``folds + 1`` heads side by side, stacked along a leading axis with plain batched matrix products
(core.personal.stacked_head; the replayed MNIST half of each step is shared by all of them): k fold models
that give the gate an out-of-fold reading of every labelled digit, and the final model trained on
all of them, which is the candidate. Early stopping picks, per user, the step with the lowest
out-of-fold NLL summed over the folds. Calibration (core.personal.batched_calibrate) and the gate
(core.personal.gate) run on (users, ...) tensors and fill a ``FinetuneMetrics`` per user. On CUDA the step
runs in bfloat16 autocast (float32 weights and optimiser) and is compiled with torch.compile.

Every model starts from the base head, also for a returning user: their current model learnt
nothing but a subset of the same labels, and starting the folds from it would leak the digits
they are scored on into them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from core.model.network import FROZEN_PREFIXES, Checkpoint, head_state, pick_device
from core.personal.batched_calibrate import choose_thresholds, combine_batched, fit_temperatures
from core.personal.batched_prep import BatchMaterial, prepare_batch
from core.personal.calibrate import NEVER_PERSONAL, MnistProbe, cached_probe, fit_base_temperature
from core.personal.finetune_prep import FinetuneConfig, ReplayBank, cached_replay, check_samples
from core.personal.gate import MIN_FRESH, FinetuneMetrics, GateDecision, gate_metrics
from core.personal.stacked_head import StackedHead, channels_last, stack_states

PROBE_PAIRS = {"cuda": 131_072, "cpu": 32_768}  # (model, probe sample) pairs evaluated at once


@dataclass
class FinetuneResult:
    checkpoint: Checkpoint  # personal checkpoint: head keys only; meta filled in, metrics = metrics.to_dict()
    decision: GateDecision
    metrics: FinetuneMetrics = dataclasses.field(default_factory=FinetuneMetrics)


@dataclass
class UserSamples:
    images: np.ndarray  # uint8 (N,28,28), labelling order
    labels: np.ndarray  # int64 (N,)
    current: Checkpoint | None = None  # the user's active personal checkpoint, if any


def mixed_loss(logits: torch.Tensor, user_labels: torch.Tensor, replay_base_logits: torch.Tensor,
               config: FinetuneConfig) -> torch.Tensor:
    """Sum over models of each model's mean loss; logits (..., B, 10).

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


def config_dict(config: FinetuneConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    if config.augment is not None:
        values["augment"] = dataclasses.asdict(config.augment)
    return values


def rejected(base: Checkpoint, current: Checkpoint | None, n_labels: int, reason: str,
             config: FinetuneConfig) -> FinetuneResult:
    """No training (too few or bad samples): the current head (or the base's), not promoted."""
    start = current.state_dict if current is not None else head_state(base.state_dict)
    metrics = FinetuneMetrics(n_labels=n_labels)
    meta = {"kind": "personal", "base_data_sha256": base.meta.get("data_sha256"), "seed": config.seed}
    checkpoint = Checkpoint(state_dict=dict(start), config=base.config, metrics=metrics.to_dict(), meta=meta)
    return FinetuneResult(checkpoint, GateDecision(False, reason), metrics)


def finetune_users(base: Checkpoint, users: Sequence[UserSamples], *,
                   config: FinetuneConfig | None = None, device: str | torch.device | None = None,
                   chunk_size: int | None = None, replay: ReplayBank | None = None,
                   probe: MnistProbe | None = None, bf16: bool | None = None,
                   compile_step: bool | None = None, timings: dict[str, float] | None = None) -> list[FinetuneResult]:
    """One ``FinetuneResult`` per user, in order (each with its own gate decision).

    device None picks CUDA when available; ``chunk_size`` users are trained together (None: 512
    on CUDA, 32 on CPU; each user is folds + 1 models). bf16 / compile_step None: on for CUDA, off
    for the CPU. ``timings``: a dict to add seconds per phase to (train, evaluate, and the
    overlapped prepare and package threads; synchronises the device).
    """
    config = config or FinetuneConfig()
    if config.folds < 2:
        raise ValueError("FinetuneConfig.folds must be at least 2")
    torch_device = pick_device(device)
    cuda = torch_device.type == "cuda"
    chunk_size = chunk_size or (512 if cuda else 32)
    trainer = _ChunkTrainer(base, config, torch_device, cuda if bf16 is None else bf16,
                            cuda if compile_step is None else compile_step, timings)
    results: list[FinetuneResult | None] = [None] * len(users)
    valid = []
    for index, user in enumerate(users):
        problem = check_samples(user.images, user.labels, config)
        if problem:
            results[index] = rejected(base, user.current, len(user.labels), problem, config)
        else:
            valid.append(index)
    if valid:
        trainer.replay = replay or cached_replay(base, config.replay_size, torch_device)
        trainer.probe = probe or cached_probe(base, config.mnist_subset, torch_device)
        chunks = [valid[start:start + chunk_size] for start in range(0, len(valid), chunk_size)]
        if len(chunks) == 1:  # one user (finetune_user), or a small batch: no threads to start
            chunk = chunks[0]
            material = trainer.prepare([users[i] for i in chunk])
            for index, result in zip(chunk, trainer.run([users[i] for i in chunk], material)(), strict=True):
                results[index] = result
            return [r for r in results if r is not None]
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
        # conv3/bn3 frozen: their output is computed once per sample and only the classifier trains
        self.frozen_conv = not any(n.startswith(("conv3.", "bn3.")) for n in config.trainable)

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
            logits = self._head(params, own, shared)
        # sum of the users' mean losses: each user's gradient is exactly its one-user gradient
        loss = mixed_loss(logits.float(), user_labels, replay_logits, self.config)
        pull = sum(((p - self.anchor[n]) ** 2).sum() for n, p in params.items() if p.requires_grad)
        return loss + self.config.l2_pull * pull

    def _head(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
              shared: torch.Tensor | None = None) -> torch.Tensor:
        """The trained models' logits from their inputs (trunk features, or with conv3 frozen the
        classifier inputs ``_inputs`` made)."""
        if self.frozen_conv:
            return self.head.classify(params, own, shared)
        return self.head.logits(params, own, shared)

    def _candidate_logits(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
                          shared: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self._head(params, own, shared).float()

    def _inputs(self, features: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """(..., 7, 7, C) trunk features -> what the trained models read: the same, or with conv3
        frozen the base's classifier inputs (..., F), computed once."""
        if not self.frozen_conv:
            return features
        base = {n: p[None] for n, p in self.anchor.items()}
        flat = features.reshape(-1, *features.shape[-3:])
        with torch.no_grad(), self._autocast():
            out = torch.cat([self.head.pooled(base, chunk[None])[0] for chunk in flat.split(batch)]) if len(flat) \
                else flat.new_zeros(0, self.net.fc1.in_features)
        return out.to(self.dtype).reshape(*features.shape[:-3], -1)

    def _shared(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """``_inputs`` of the replay bank or the MNIST probe: once per process for a given bank or
        probe (a one-user call builds a new trainer; recomputing them cost ~1 s of CPU per user)."""
        key = (name, id(features), str(self.dtype), self.frozen_conv, _fingerprint(self.anchor))
        cached = _SHARED_INPUTS.get(key)
        if cached is None or cached[0] is not features:
            if len(_SHARED_INPUTS) >= 8:
                _SHARED_INPUTS.clear()
            cached = _SHARED_INPUTS[key] = (features, self._inputs(channels_last(features).to(self.dtype)))
        return cached[1]

    def _logits(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        """Full-head logits from trunk features (the base's, a current model's)."""
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
        config, members, count = self.config, material.members, len(users)
        rows = count * members
        params = {n: self.anchor[n].expand(rows, *self.anchor[n].shape).clone() for n in self.names}
        trained = [n for n in self.names if n.startswith(config.trainable)]
        for name in trained:
            params[name].requires_grad_(True)
        replay_inputs = self._shared("replay", self.replay.features)
        train_inputs = self._inputs(material.train_features)
        held_inputs = self._inputs(material.holdout_features)
        n_labels = torch.tensor(material.n_labels, device=self.device, dtype=torch.float32)

        def out_of_fold_nll() -> torch.Tensor:
            """(U,) mean NLL of each user's out-of-fold readings (every labelled sample once)."""
            logits = self._candidate_logits(params, held_inputs)
            losses = F.cross_entropy(logits.flatten(0, 1), material.holdout_labels.flatten(), reduction="none")
            summed = (losses.view(material.holdout_mask.shape) * material.holdout_mask).sum(1)
            return summed.view(count, members).sum(1) / n_labels

        # fused: one kernel for every stacked tensor's update (CUDA); the same arithmetic as Adam
        optimizer = torch.optim.Adam([params[n] for n in trained], lr=config.lr, eps=config.adam_eps,
                                     fused=self.device.type == "cuda")
        best_loss = out_of_fold_nll()
        best_step = torch.zeros(count, dtype=torch.long, device=self.device)
        best = {n: p.detach().clone() for n, p in params.items()}
        for step in range(config.steps):
            u, r = material.user_schedule[:, step], material.replay_schedule[step]
            loss = self.step_loss(params, train_inputs[u], replay_inputs[r],
                                  material.train_labels[u], self.replay.base_logits[r])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                current = out_of_fold_nll()
                better = current < best_loss
                best_loss = torch.where(better, current, best_loss)
                best_step = torch.where(better, torch.full_like(best_step, step + 1), best_step)
                each = better.repeat_interleave(members)
                for name, value in params.items():
                    mask = each.view(-1, *([1] * (value.dim() - 1)))
                    best[name] = torch.where(mask, value.detach(), best[name])
        seconds = (time.perf_counter() - started) / count
        self._phase("train")
        return self._evaluate(users, material, held_inputs, best, best_step, seconds)

    def _probe_logits(self, best: dict[str, torch.Tensor]) -> torch.Tensor:
        """(U, N, 10) logits on the MNIST probe, a slice of users at a time to bound memory."""
        assert self.probe is not None
        features = self._shared("probe", self.probe.features)
        users = next(iter(best.values())).shape[0]
        step = max(1, PROBE_PAIRS.get(self.device.type, 32_768) // max(len(self.probe.labels), 1))
        return torch.cat([self._candidate_logits({n: p[i:i + step] for n, p in best.items()}, None, features)
                          for i in range(0, users, step)])

    def _evaluate(self, users: Sequence[UserSamples], material: BatchMaterial, held_inputs: torch.Tensor,
                  best: dict[str, torch.Tensor], best_step: torch.Tensor,
                  seconds: float) -> Callable[[], list[FinetuneResult]]:
        """Calibrate every user's candidate on its out-of-fold readings, compare it with what they
        are served now, and fill their metrics (gated when packaged)."""
        assert self.probe is not None
        probe, members, count = self.probe, material.members, len(users)
        folds = members - 1
        held = material.holdout_features
        flat = (count, -1)
        mask = material.holdout_mask.reshape(flat)  # (U, members * H): every labelled sample once
        labels = material.holdout_labels.reshape(flat)
        position = material.holdout_position.reshape(flat)
        held_by_user = held.reshape(count, -1, *held.shape[2:])
        base_t = fit_base_temperature(self.base, probe)
        base_params = {n: p[None] for n, p in self.anchor.items()}
        base_logits = self._logits(base_params, held.reshape(1, -1, *held.shape[2:])).view(count, -1, 10)
        base_probs = torch.softmax(base_logits / base_t, dim=-1)
        before_probs = self._served_probs(users, held_by_user, base_probs)
        candidate_logits = self._candidate_logits(best, held_inputs).view(count, -1, 10)  # fold f's model reads fold f
        final = torch.arange(count, device=self.device) * members + folds
        shipped = {n: p[final] for n, p in best.items()}
        mnist_logits = self._probe_logits(shipped)
        n_probe = len(probe.labels)
        # half the weight on the user's out-of-fold readings, half on the MNIST probe: a few user
        # samples alone would give a degenerate temperature
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
        # a returning user is compared on the digits labelled after their current model was trained
        fresh_from = torch.tensor([_fresh_from(u) for u in users], device=self.device)
        compared = mask * (position >= fresh_from[:, None]).float()

        def right(probs: torch.Tensor) -> torch.Tensor:  # how many compared digits it reads right
            return ((probs.argmax(-1) == labels).float() * compared).sum(1)

        def nll(probs: torch.Tensor) -> torch.Tensor:
            hit = probs.gather(-1, labels[..., None]).squeeze(-1).clamp_min(1e-12)
            return -(hit.log() * compared).sum(1) / compared.sum(1)

        columns = {
            "right_before": right(before_probs), "right_after": right(after_probs),
            "right_personal": right(candidate_probs), "n_compared": compared.sum(1),
            "heldout_nll_before": nll(before_probs), "heldout_nll_after": nll(after_probs),
            "mnist_right": (mnist_logits.argmax(-1) == mnist_labels).float().sum(1),
            "mnist_combined_right": (mnist_combined.argmax(-1) == mnist_labels).float().sum(1),
            "best_step": best_step.float(), "temperature": temperature, "threshold": threshold,
        }
        table = dict(zip(columns, torch.stack(list(columns.values())).cpu().tolist(), strict=True))
        host = _to_host(torch.cat([shipped[n].detach().float().flatten(1) for n in self.names], dim=1))
        mnist_base_right = int((probe.base_logits.argmax(-1) == probe.labels).sum())
        shared = {"folds": folds, "n_probe": n_probe, "mnist_base_right": mnist_base_right, "seconds": seconds}
        self._phase("evaluate")
        return functools.partial(self._package, material.n_labels, table, host, shared, base_t)

    def _package(self, n_labels_list: list[int], table: dict[str, list[float]], host: torch.Tensor,
                 shared: dict[str, Any], base_t: float) -> list[FinetuneResult]:
        started = time.perf_counter()
        shapes = [self.anchor[n].shape for n in self.names]
        sizes = [int(np.prod(s)) for s in shapes]
        settings = config_dict(self.config)
        n_probe = shared["n_probe"]
        results = []
        for i, n_labels in enumerate(n_labels_list):
            # one storage per user (a view of ``host`` would save the whole chunk with the checkpoint)
            own = host[i].clone()
            state = {n: part.view(shape) for n, part, shape in zip(self.names, own.split(sizes), shapes, strict=True)}
            state |= {n: b.clone() for n, b in self.buffers.items()}
            compared = round(table["n_compared"][i])
            metrics = FinetuneMetrics(
                n_labels=n_labels, n_train=n_labels, n_holdout=compared, folds=shared["folds"],
                heldout_before=table["right_before"][i] / compared, heldout_after=table["right_after"][i] / compared,
                heldout_personal=table["right_personal"][i] / compared,
                heldout_nll_before=table["heldout_nll_before"][i], heldout_nll_after=table["heldout_nll_after"][i],
                mnist_accuracy=table["mnist_right"][i] / n_probe,
                mnist_base_accuracy=shared["mnist_base_right"] / n_probe,
                mnist_combined_accuracy=table["mnist_combined_right"][i] / n_probe, mnist_subset=n_probe,
                best_step=int(table["best_step"][i]), train_seconds=shared["seconds"])
            meta = {"kind": "personal", "temperature": table["temperature"][i], "threshold": table["threshold"][i],
                    "base_temperature": base_t, "base_data_sha256": self.base.meta.get("data_sha256"),
                    "seed": self.config.seed, "config": dict(settings)}
            checkpoint = Checkpoint(state_dict=state, config=self.base.config, metrics=metrics.to_dict(), meta=meta)
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


_SHARED_INPUTS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _fingerprint(anchor: dict[str, torch.Tensor]) -> tuple[float, ...]:
    return tuple(float(anchor[n].double().sum()) for n in ("conv3.weight", "bn3.weight", "bn3.bias"))


def _fresh_from(user: UserSamples) -> int:
    """The first sample a returning user's current model never saw (labels come in labelling order;
    its metrics say how many it trained on), when at least MIN_FRESH follow; else 0 (all samples)."""
    if user.current is None:
        return 0
    seen = FinetuneMetrics.from_dict(user.current.metrics).n_labels
    return seen if len(user.labels) - seen >= MIN_FRESH else 0


def _to_host(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy; from CUDA through pinned memory (several times faster than pageable)."""
    if value.device.type != "cuda":
        return value.cpu()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    torch.cuda.synchronize(value.device)
    return host
