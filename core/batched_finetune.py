"""Many users fine-tuned at once: the frozen trunk runs once over all users' samples, the per-user
heads are stacked along a leading user axis and trained together (torch.func.functional_call +
vmap), in chunks of users that fit in memory. Same recipe, schedule and randomness per user as
``core.finetune.finetune_user``, so results match the one-user path within float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.finetune import FinetuneConfig, FinetuneResult
from core.model import Checkpoint


@dataclass
class UserSamples:
    images: np.ndarray  # uint8 (N,28,28), labelling order
    labels: np.ndarray  # int64 (N,)
    current: Checkpoint | None = None  # the user's active personal checkpoint, if any


def finetune_users(base: Checkpoint, users: Sequence[UserSamples], *,
                   config: FinetuneConfig | None = None, device: str | torch.device | None = None,
                   chunk_size: int = 256) -> list[FinetuneResult]:
    """One ``FinetuneResult`` per user, in order (each with its own gate decision).

    device None picks CUDA when available; ``chunk_size`` users are trained together at a time.
    """
    raise NotImplementedError
