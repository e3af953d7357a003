"""Batched augmentation on tensors: affine, elastic warp and stroke thickness, all at once.

Working on whole batches (one grid_sample call) keeps augmentation cheap enough to run in the
training loop itself, on CPU or GPU, without DataLoader worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 12.0
    shift: float = 0.12  # fraction of the half-width (grid units are -1..1)
    scale: tuple[float, float] = (0.85, 1.12)
    shear: float = 0.25
    elastic_alpha: float = 0.6  # displacement amplitude in pixels of a coarse 4x4 field
    elastic_p: float = 0.5
    thickness_p: float = 0.3


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """images: float (N,1,28,28) in [0,1], white on black. Returns an augmented copy."""
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*(shape or (n,)), generator=generator, device=device) * (high - low) + low

    angle = uniform(-config.rotate_deg, config.rotate_deg) * math.pi / 180
    scale = uniform(*config.scale)
    shear = uniform(-config.shear, config.shear)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + shear * cos
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos + shear * sin
    theta[:, :, 2] = uniform(-config.shift, config.shift, n, 2)
    grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)

    if config.elastic_alpha > 0:
        coarse = torch.randn(n, 2, 4, 4, generator=generator, device=device)
        field = F.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False)
        on = (torch.rand(n, generator=generator, device=device) < config.elastic_p).float()
        grid = grid + field.permute(0, 2, 3, 1) * (config.elastic_alpha * 2 / 28) * on[:, None, None, None]

    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if config.thickness_p > 0:
        pick = torch.rand(n, generator=generator, device=device)
        thicker = (pick < config.thickness_p / 2)[:, None, None, None]
        thinner = ((pick >= config.thickness_p / 2) & (pick < config.thickness_p))[:, None, None, None]
        dilated = F.max_pool2d(out, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-out, 2, stride=1, padding=0)
        eroded = F.pad(eroded, (0, 1, 0, 1))
        # blend so a thickness change is a nudge, not a full morphological step
        out = torch.where(thicker, 0.5 * out + 0.5 * dilated, out)
        out = torch.where(thinner, torch.maximum(eroded, 0.6 * out), out)
    return out.clamp(0, 1)
