"""Calibrated fallback: temperature scaling, the personal-vs-base rule, and a fast MNIST probe.

Rule (used by core.recognize): with calibrated probabilities p_personal = softmax(z_p / T_p) and
p_base = softmax(z_b / T_b), answer with the personal model's digit when max(p_personal) >=
threshold, otherwise with the base model's digit. T_p and the threshold are fitted per personal
model on held-out data (see ``choose_threshold``); T_b once for the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.model import Checkpoint


@dataclass
class Combined:
    digits: torch.Tensor  # (N,) int64
    confidences: torch.Tensor  # (N,) calibrated confidence of the answer given
    personal: torch.Tensor  # (N,) bool: True where the personal model answered


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the (weighted) NLL of softmax(logits / T); a 1-D search on log T."""
    raise NotImplementedError


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    raise NotImplementedError


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


def combine(personal_probs: torch.Tensor, base_probs: torch.Tensor, threshold: float) -> Combined:
    """The fallback rule on calibrated probabilities (N,10): personal if its confidence >= threshold."""
    raise NotImplementedError


def choose_threshold(personal_probs: torch.Tensor, base_probs: torch.Tensor, labels: torch.Tensor, *,
                     mnist_personal_probs: torch.Tensor | None = None,
                     mnist_base_probs: torch.Tensor | None = None,
                     mnist_labels: torch.Tensor | None = None, max_mnist_drop: float = 0.0) -> float:
    """Threshold maximising combined accuracy on the user's held-out samples.

    Candidates are the personal confidences seen (plus 0 and just above 1 = "never personal").
    When MNIST probabilities are given, only thresholds whose combined MNIST accuracy is at least
    the base's minus ``max_mnist_drop`` are allowed ("never worse on MNIST"); just above 1 always
    qualifies. Ties are broken by the lower combined NLL, then the higher threshold.
    """
    raise NotImplementedError


class MnistProbe:
    """A fixed MNIST test subset with the base trunk's features precomputed.

    ``subset`` samples (0 = all 10,000) drawn with a fixed seed; the gate uses 2,000 during jobs,
    the benchmarks use all 10,000. Evaluating a head costs one head forward per sample.
    """

    def __init__(self, base: Checkpoint, subset: int = 2000, *, device: str | torch.device | None = None,
                 data_dir: str | None = None) -> None:
        raise NotImplementedError

    def logits(self, head: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(N,10) logits of the base with ``head`` (a head state dict) laid over it (None = base)."""
        raise NotImplementedError

    def accuracy(self, head: dict[str, torch.Tensor] | None = None) -> float:
        raise NotImplementedError


def fit_base_temperature(base: Checkpoint, probe: MnistProbe | None = None) -> float:
    """The base model's temperature, fitted on an MNIST probe (store it in base meta["temperature"])."""
    raise NotImplementedError
