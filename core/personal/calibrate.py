"""Calibrated fallback: temperature scaling, the personal-vs-base rule, and a fast MNIST probe.

Rule (used by core.recognize): with calibrated probabilities p_personal = softmax(z_p / T_p) and
p_base = softmax(z_b / T_b), answer with the personal model's digit when max(p_personal) >=
threshold, otherwise with the base model's digit. T_p and the threshold are fitted per personal
model on held-out data (see ``choose_threshold``); T_b once for the base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from core.model.data import load_mnist
from core.model.network import Checkpoint, DigitNet, normalize, pick_device

NEVER_PERSONAL = 1.0 + 1e-6  # a threshold no confidence reaches
MNIST_PROBE_SEED = 12345
MAX_CANDIDATES = 512  # thresholds tried by choose_threshold


@dataclass
class Combined:
    digits: torch.Tensor  # (N,) int64
    confidences: torch.Tensor  # (N,) calibrated confidence of the answer given
    personal: torch.Tensor  # (N,) bool: True where the personal model answered
    probabilities: torch.Tensor  # (N,10) calibrated probabilities of the model that answered


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
        weights: torch.Tensor | None = None) -> float:
    """(Weighted) mean negative log-likelihood of softmax(logits / temperature)."""
    losses = F.cross_entropy(logits.float() / temperature, labels, reduction="none")
    if weights is None:
        return float(losses.mean())
    return float((losses * weights).sum() / weights.sum())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the (weighted) NLL of softmax(logits / T).

    The NLL is convex in 1/T, so a golden-section search on log T over ``bounds`` finds it; the
    bounds keep a handful of all-correct held-out samples from driving T to zero.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    w = None if weights is None else weights.detach().float().cpu()
    low, high = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, math.exp(a), w), nll(logits, labels, math.exp(b), w)
    for _ in range(40):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, math.exp(a), w)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, math.exp(b), w)
    return math.exp((low + high) / 2)


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


def combine(personal_probs: torch.Tensor, base_probs: torch.Tensor, threshold: float) -> Combined:
    """The fallback rule on calibrated probabilities (N,10): personal if its confidence >= threshold."""
    personal_conf, personal_digit = personal_probs.max(dim=-1)
    base_conf, base_digit = base_probs.max(dim=-1)
    use_personal = personal_conf >= threshold
    return Combined(
        digits=torch.where(use_personal, personal_digit, base_digit),
        confidences=torch.where(use_personal, personal_conf, base_conf),
        personal=use_personal,
        probabilities=torch.where(use_personal[:, None], personal_probs, base_probs),
    )


def _combined_scores(personal_probs: torch.Tensor, base_probs: torch.Tensor, labels: torch.Tensor,
                     thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, NLL) of the combined answer for each candidate threshold, vectorised."""
    use = personal_probs.max(-1).values[None, :] >= thresholds[:, None]  # (T, N)
    p_right = personal_probs.gather(1, labels[:, None]).squeeze(1)
    b_right = base_probs.gather(1, labels[:, None]).squeeze(1)
    p_hit = (personal_probs.argmax(-1) == labels).float()
    b_hit = (base_probs.argmax(-1) == labels).float()
    accuracy = torch.where(use, p_hit, b_hit).mean(1)
    loss = -torch.where(use, p_right, b_right).clamp_min(1e-12).log().mean(1)
    return accuracy, loss


def choose_threshold(personal_probs: torch.Tensor, base_probs: torch.Tensor, labels: torch.Tensor, *,
                     mnist_personal_probs: torch.Tensor | None = None,
                     mnist_base_probs: torch.Tensor | None = None,
                     mnist_labels: torch.Tensor | None = None, max_mnist_drop: float = 0.0) -> float:
    """Threshold maximising combined accuracy on the user's held-out samples.

    Candidates are the personal confidences seen (plus 0 and just above 1 = "never personal").
    When MNIST probabilities are given, only thresholds whose combined MNIST accuracy is at least
    the base's minus ``max_mnist_drop`` are allowed ("never worse on MNIST"); just above 1 always
    qualifies. Ties go to the lowest threshold (the personal model answers as often as allowed).
    """
    seen = [personal_probs.max(-1).values.float().cpu()]
    if mnist_personal_probs is not None:
        seen.append(mnist_personal_probs.max(-1).values.float().cpu())
    candidates = torch.cat(seen).unique()
    if len(candidates) > MAX_CANDIDATES:  # quantiles keep the search cheap for large probes
        candidates = candidates.quantile(torch.linspace(0, 1, MAX_CANDIDATES))
    thresholds = torch.cat([torch.tensor([0.0, NEVER_PERSONAL]), candidates]).unique()
    allowed = torch.ones(len(thresholds), dtype=torch.bool)
    if mnist_personal_probs is not None and mnist_base_probs is not None and mnist_labels is not None:
        mnist_acc, _ = _combined_scores(mnist_personal_probs.cpu(), mnist_base_probs.cpu(),
                                        mnist_labels.cpu(), thresholds)
        base_acc = float((mnist_base_probs.argmax(-1).cpu() == mnist_labels.cpu()).float().mean())
        allowed = mnist_acc >= base_acc - max_mnist_drop - 1e-9
        allowed[thresholds >= NEVER_PERSONAL] = True
    if len(labels) == 0:
        return float(thresholds[allowed].min())
    accuracy, _ = _combined_scores(personal_probs.cpu(), base_probs.cpu(), labels.cpu(), thresholds)
    # lexicographic: allowed, accuracy (rounded against float noise) desc, threshold asc: a
    # handful of held-out samples rarely separates thresholds, and the personal model was trained
    # for this user, so among equals it answers as often as the MNIST constraint allows
    best = max(range(len(thresholds)), key=lambda i: (
        bool(allowed[i]), round(float(accuracy[i]), 9), -float(thresholds[i])))
    return float(thresholds[best])


def fingerprint(checkpoint: Checkpoint) -> tuple[float, ...]:
    """A cheap identity for caching per-base data (the trunk weights decide the features)."""
    state = checkpoint.state_dict
    return tuple(float(state[k].double().sum()) for k in
                 ("conv1.weight", "bn1.running_mean", "conv2.weight", "bn2.running_var"))


@torch.no_grad()
def trunk_features(model: DigitNet, images: torch.Tensor, device: torch.device,
                   batch_size: int = 2048) -> torch.Tensor:
    """Frozen-trunk features (N,C,7,7) on ``device`` for uint8 (N,28,28) or normalised float images."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = normalize(x) if x.dtype == torch.uint8 else x
        chunks.append(model.trunk(x.to(device)))
    if not chunks:
        return torch.zeros(0, model.config.channels[1], 7, 7, device=device)
    return torch.cat(chunks)


@torch.no_grad()
def head_logits(model: DigitNet, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    model.eval()
    return torch.cat([model.head(features[s:s + batch_size]) for s in range(0, len(features), batch_size)]
                     or [torch.zeros(0, model.config.num_classes, device=features.device)])


def mnist_probe_indices(subset: int, total: int = 10_000) -> torch.Tensor:
    """The fixed MNIST test subset (all when subset is 0 or >= total)."""
    if subset <= 0 or subset >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(MNIST_PROBE_SEED))[:subset]


class MnistProbe:
    """A fixed MNIST test subset with the base trunk's features precomputed.

    ``subset`` samples (0 = all 10,000) drawn with a fixed seed; the gate uses 2,000 during jobs,
    the benchmarks use all 10,000. Evaluating a head costs one head forward per sample.
    """

    def __init__(self, base: Checkpoint, subset: int = 2000, *, device: str | torch.device | None = None,
                 data_dir: str | None = None,
                 samples: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """``samples`` (uint8 images (N,28,28), labels) replaces the MNIST test subset (tests)."""
        self.device = pick_device(device)
        self.base = base
        self.model = base.build().to(self.device)
        if samples is None:
            images, labels = load_mnist(train=False, directory=data_dir)
            index = mnist_probe_indices(subset, len(images))
            samples = (images[index], labels[index])
        self.labels = samples[1].to(self.device)
        self.features = trunk_features(self.model, samples[0], self.device)
        self.base_logits = head_logits(self.model, self.features)
        self._base_temperature: float | None = None

    def logits(self, head: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(N,10) logits of the base with ``head`` (a head state dict) laid over it (None = base)."""
        if head is None:
            return self.base_logits
        model = self.base.build().to(self.device)
        model.load_state_dict(head, strict=False)
        return head_logits(model, self.features)

    def accuracy(self, head: dict[str, torch.Tensor] | None = None) -> float:
        return float((self.logits(head).argmax(1) == self.labels).float().mean())

    @property
    def base_temperature(self) -> float:
        if self._base_temperature is None:
            self._base_temperature = fit_temperature(self.base_logits, self.labels)
        return self._base_temperature


_PROBES: dict[tuple[object, ...], MnistProbe] = {}


def cached_probe(base: Checkpoint, subset: int, device: torch.device) -> MnistProbe:
    key = (fingerprint(base), subset, str(device))
    if key not in _PROBES:
        _PROBES[key] = MnistProbe(base, subset, device=device)
    return _PROBES[key]


def fit_base_temperature(base: Checkpoint, probe: MnistProbe | None = None) -> float:
    """The base model's temperature, fitted on an MNIST probe (store it in base meta["temperature"]).

    A stored meta["temperature"] wins so that every component uses the same value.
    """
    if "temperature" in base.meta:
        return float(base.meta["temperature"])
    probe = probe or cached_probe(base, 2000, pick_device())
    return probe.base_temperature
