"""core.personal.calibrate's temperature fit and threshold choice for many users at once (the GPU worker).

Same rules as ``fit_temperature`` and ``choose_threshold``, computed on (U, ...) tensors so a
batch of users is calibrated in a few kernels instead of a Python loop per user. Held-out sets
differ in size, so they arrive padded with a 0/1 mask.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from core.personal.calibrate import MAX_CANDIDATES, NEVER_PERSONAL


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 temperature: torch.Tensor) -> torch.Tensor:
    """(U,) weighted mean NLL of softmax(logits / T_u); logits (U, N, 10), labels/weights (U, N)."""
    scaled = logits / temperature[:, None, None]
    losses = F.cross_entropy(scaled.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    return (losses * weights).sum(1) / weights.sum(1)


def fit_temperatures(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                     bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 40) -> torch.Tensor:
    """(U,) temperatures: ``fit_temperature``'s golden-section search on log T, one per user."""
    users, device = logits.shape[0], logits.device
    logits = logits.float()

    def f(log_t: torch.Tensor) -> torch.Tensor:
        return weighted_nll(logits, labels, weights, log_t.exp())

    low = torch.full((users,), math.log(bounds[0]), device=device, dtype=torch.float64)
    high = torch.full((users,), math.log(bounds[1]), device=device, dtype=torch.float64)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = f(a.float()), f(b.float())
    for _ in range(iterations):
        left = fa <= fb  # the minimum lies in [low, b]
        high, low = torch.where(left, b, high), torch.where(left, low, a)
        new_b = torch.where(left, a, low + ratio * (high - low))
        new_a = torch.where(left, high - ratio * (high - low), b)
        point = torch.where(left, new_a, new_b)
        value = f(point.float())
        fb, fa = torch.where(left, fa, value), torch.where(left, value, fb)
        a, b = new_a, new_b
    return ((low + high) / 2).exp().float()


def _unique_candidates(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row: the distinct valid values (sorted), or MAX_CANDIDATES quantiles of them when there
    are more; padded with NEVER_PERSONAL. values/valid (U, N) -> (U, min(N, MAX_CANDIDATES))."""
    big = torch.finfo(values.dtype).max
    ordered = torch.where(valid, values, big).sort(dim=1).values
    fresh = torch.ones_like(valid)
    fresh[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    fresh &= ordered < big
    uniques = torch.where(fresh, ordered, big).sort(dim=1).values
    count = fresh.sum(1)
    width = min(values.shape[1], MAX_CANDIDATES)
    position = torch.linspace(0, 1, MAX_CANDIDATES, device=values.device)[None, :] * (count[:, None] - 1).clamp_min(0)
    below = position.floor().long()
    above = position.ceil().long()
    quantiles = torch.lerp(uniques.gather(1, below), uniques.gather(1, above), position - below)
    head = uniques[:, :width]
    head = torch.where(torch.arange(width, device=values.device)[None, :] < count[:, None], head, NEVER_PERSONAL)
    if width < MAX_CANDIDATES:
        return head
    return torch.where((count > MAX_CANDIDATES)[:, None], quantiles, head)


def _hits_per_threshold(confidence: torch.Tensor, personal_hit: torch.Tensor, base_hit: torch.Tensor,
                        thresholds: torch.Tensor) -> torch.Tensor:
    """(U, T) count of right combined answers for each threshold (personal where conf >= t).

    Sorting the confidences once turns "how many personal answers at threshold t" into a
    searchsorted and a suffix sum, instead of a (U, T, N) comparison."""
    conf, order = confidence.sort(dim=1)
    gain = (personal_hit.long() - base_hit.long()).gather(1, order)
    suffix = torch.cat([gain.flip(1).cumsum(1).flip(1), torch.zeros_like(gain[:, :1])], dim=1)  # (U, N+1)
    first = torch.searchsorted(conf.contiguous(), thresholds.contiguous(), side="left")
    return base_hit.long().sum(1, keepdim=True) + suffix.gather(1, first)


def choose_thresholds(personal_probs: torch.Tensor, base_probs: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor, mnist_personal_probs: torch.Tensor, mnist_base_probs: torch.Tensor,
                      mnist_labels: torch.Tensor) -> torch.Tensor:
    """(U,) thresholds: ``choose_threshold`` with the MNIST constraint (max_mnist_drop 0), per user.

    personal/base_probs (U, H, 10) with mask (U, H); mnist_personal_probs (U, N, 10);
    mnist_base_probs (N, 10) and mnist_labels (N,) are shared."""
    users, device = personal_probs.shape[0], personal_probs.device
    valid = mask.bool()
    held_conf = personal_probs.max(-1).values
    mnist_conf = mnist_personal_probs.max(-1).values
    seen = torch.cat([held_conf, mnist_conf], dim=1)
    seen_valid = torch.cat([valid, torch.ones_like(mnist_conf, dtype=torch.bool)], dim=1)
    fixed = torch.tensor([0.0, NEVER_PERSONAL], device=device).expand(users, 2)
    thresholds = torch.cat([fixed, _unique_candidates(seen, seen_valid)], dim=1)  # (U, T)

    mnist_hit = mnist_personal_probs.argmax(-1) == mnist_labels[None, :]
    mnist_base_hit = (mnist_base_probs.argmax(-1) == mnist_labels).expand_as(mnist_hit)
    mnist_counts = _hits_per_threshold(mnist_conf, mnist_hit, mnist_base_hit, thresholds)
    allowed = (mnist_counts >= mnist_base_hit.long().sum(1, keepdim=True)) | (thresholds >= NEVER_PERSONAL)

    held_hit = (personal_probs.argmax(-1) == labels) & valid
    base_hit = (base_probs.argmax(-1) == labels) & valid
    # padding never answers personally (confidence -1 is below every threshold)
    held_counts = _hits_per_threshold(torch.where(valid, held_conf, -1.0), held_hit, base_hit, thresholds)
    # lexicographic as in choose_threshold: allowed, most right answers, then the lowest threshold
    best_count = torch.where(allowed, held_counts, -1).amax(1, keepdim=True)
    winners = allowed & (held_counts == best_count)
    return torch.where(winners, thresholds, math.inf).amin(1)


def combine_batched(personal_probs: torch.Tensor, base_probs: torch.Tensor,
                    threshold: torch.Tensor) -> torch.Tensor:
    """(..., N, 10) probabilities of the model that answers under the fallback rule, per user."""
    use = personal_probs.max(-1).values >= threshold.view(-1, *([1] * (personal_probs.dim() - 2)))
    return torch.where(use[..., None], personal_probs, base_probs)
