"""Many users' heads (conv3 block + classifier) evaluated at once with plain matrix products.

The frozen trunk's features are kept channels-last, (..., 7, 7, C). conv3 becomes one matrix
product per user over im2col rows (the 9 shifted 7x7 slices side by side), so per-user weights
cost no grouped convolution (cuDNN runs a grouped conv as one kernel per group). Samples every
user shares (the replayed MNIST digits, the MNIST probe) go through one ordinary GEMM against all
users' weights at once, so their im2col rows are read once for the whole batch of users.
Mathematically identical to ``DigitNet.head`` in eval mode (BatchNorm uses running statistics).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from core.model.network import DigitNet

BN_EPS = 1e-5


def channels_last(features: torch.Tensor) -> torch.Tensor:
    """(N, C, 7, 7) trunk features -> contiguous (N, 7, 7, C)."""
    return features.permute(0, 2, 3, 1).contiguous()


def im2col(x: torch.Tensor) -> torch.Tensor:
    """(..., 7, 7, C) -> (..., 7, 7, 9C): each position's 3x3 neighbourhood (zero padded)."""
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))
    return torch.cat([padded[..., dy:dy + 7, dx:dx + 7, :] for dy in range(3) for dx in range(3)], dim=-1)


def stack_states(states: list[dict[str, torch.Tensor]], names: list[str],
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Per-user head state dicts -> one float32 tensor per name with a leading user axis."""
    return {n: torch.stack([s[n].to(device, torch.float32) for s in states]) for n in names}


class StackedHead:
    """Evaluates U heads whose trainable weights are stacked along a leading user axis."""

    def __init__(self, net: DigitNet) -> None:
        bn = net.bn3
        assert bn.running_mean is not None and bn.running_var is not None
        self.inv_std = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
        self.mean = bn.running_mean.detach().float()
        self.channels = net.conv3.in_channels

    def logits(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
               shared: torch.Tensor | None = None) -> torch.Tensor:
        """(U, B + S, 10) logits: ``own`` (U, B, 7, 7, C) samples per user, then ``shared``
        (S, 7, 7, C) samples seen by every user. Either may be None."""
        return self.classify(params, self.pooled(params, own, shared), None)

    def pooled(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
               shared: torch.Tensor | None = None) -> torch.Tensor:
        """(U, B + S, F) the classifier's input (conv3 block, max-pooled, flattened in (c, y, x)
        order as fc1 expects) for ``own`` then ``shared`` samples (as ``logits``)."""
        weight = params["conv3.weight"]  # (U, O, C, 3, 3)
        users, out_channels = weight.shape[:2]
        # rows ordered (ky, kx, c) to match im2col's columns
        kernel = weight.permute(0, 3, 4, 2, 1).reshape(users, 9 * self.channels, out_channels)
        parts = []
        if own is not None:
            cols = im2col(own).reshape(users, -1, 9 * self.channels)
            parts.append(torch.bmm(cols, kernel))
        if shared is not None:
            cols = im2col(shared).reshape(-1, 9 * self.channels)
            flat = cols @ kernel.permute(1, 0, 2).reshape(9 * self.channels, users * out_channels)
            parts.append(flat.view(-1, users, out_channels).transpose(0, 1))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (U, (B+S)*49, O)
        scale = params["bn3.weight"] * self.inv_std.to(h.device)
        shift = (params["bn3.bias"] - self.mean.to(h.device) * scale).to(h.dtype)
        scale = scale.to(h.dtype)  # under autocast h is bfloat16: keep the elementwise work in it
        h = torch.relu(h * scale[:, None, :] + shift[:, None, :])
        h = h.reshape(users, -1, 7, 7, out_channels)[:, :, :6, :6]
        h = h.reshape(users, h.shape[1], 3, 2, 3, 2, out_channels).amax(dim=(3, 5))  # 2x2 max-pool, floor
        return h.permute(0, 1, 4, 2, 3).reshape(users, h.shape[1], -1)  # (c, y, x) order, as fc1 expects

    def classify(self, params: dict[str, torch.Tensor], own: torch.Tensor | None,
                 shared: torch.Tensor | None = None) -> torch.Tensor:
        """(U, B + S, 10) logits from classifier inputs: ``own`` (U, B, F) per user, then ``shared``
        (S, F) seen by every user (one GEMM against all users' fc1 at once). Either may be None."""
        weight = params["fc1.weight"]  # (U, H, F)
        users, hidden = weight.shape[:2]
        parts = []
        if own is not None:
            parts.append(torch.bmm(own, weight.transpose(1, 2)))
        if shared is not None:
            flat = shared @ weight.permute(2, 0, 1).reshape(weight.shape[2], users * hidden)
            parts.append(flat.view(-1, users, hidden).transpose(0, 1))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (U, B+S, H)
        h = torch.relu(h + params["fc1.bias"][:, None, :].to(h.dtype))
        return torch.baddbmm(params["fc2.bias"][:, None, :], h, params["fc2.weight"].transpose(1, 2))
