"""The digit CNN and its checkpoint format.

A checkpoint is a plain dict (weights, config, metrics, data checksum) saved with torch.save and
always loaded with ``weights_only=True`` so that loading never executes pickled code.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# The early layers a personal fine-tune keeps frozen (weights and BatchNorm statistics).
FROZEN_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.")


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, int, int] = (32, 64, 128)
    hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 10


class DigitNet(nn.Module):
    """The seed's CNN: three 3x3 conv + BN + max-pool blocks, fc 1152 -> 256 -> 10."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c1, c2, c3 = self.config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3 * 3 * 3, self.config.hidden)
        self.dropout = nn.Dropout(self.config.dropout)
        self.fc2 = nn.Linear(self.config.hidden, self.config.num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part during fine-tuning: conv1/conv2 blocks, (N,1,28,28) -> (N,C2,7,7)."""
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The trainable part during fine-tuning: conv3 block and the classifier."""
        return self.fc2(self.dropout(self.penultimate(h)))

    def penultimate(self, h: torch.Tensor) -> torch.Tensor:
        """Trunk features -> the classifier's input (fc1 after ReLU): the personal memory's space."""
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else CUDA when there is one, else the CPU (the one place this is decided)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def for_inference(model: DigitNet) -> DigitNet:
    """A copy for serving: each BatchNorm folded into its conv (eval-mode BN is an affine map per
    channel) and the weights channels-last. Same outputs to float rounding; ~1.6x faster for the
    few digits of one photo on one CPU thread (fewer kernels, and oneDNN's preferred layout)."""
    fused = copy.deepcopy(model).eval()
    for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
        conv, bn = getattr(fused, conv_name), getattr(fused, bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        assert bn.running_mean is not None and bn.running_var is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias = nn.Parameter(bias)
        setattr(fused, bn_name, nn.Identity())
    return fused.to(memory_format=torch.channels_last)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float images (N,28,28) or (N,1,28,28) -> normalised float (N,1,28,28)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x - MNIST_MEAN) / MNIST_STD


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: ModelConfig = field(default_factory=ModelConfig)
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # A personal model's memory of the user's labelled crops (core.personal.memory.PersonalMemory.to_dict)
    memory: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.memory is None else {"memory": self.memory}
        return {
            **extra,
            "format": "digitbot-checkpoint-v1",
            "state_dict": self.state_dict,
            "config": dataclasses.asdict(self.config),
            # JSON round trip: only plain types may enter the file, or weights_only loading refuses it
            "metrics": json.loads(json.dumps(self.metrics, default=str)),
            "meta": json.loads(json.dumps(self.meta, default=str)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("format") != "digitbot-checkpoint-v1":
            raise ValueError("not a digitbot checkpoint")
        config = dict(data["config"])
        config["channels"] = tuple(config["channels"])
        return cls(
            state_dict=data["state_dict"],
            config=ModelConfig(**config),
            metrics=dict(data.get("metrics", {})),
            meta=dict(data.get("meta", {})),
            memory=data.get("memory"),
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        return cls.from_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))

    def save(self, path: str | Path) -> None:
        """Atomic write: a crash or a full disk never leaves a half-written checkpoint behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are ordinary readable files
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        return cls.from_bytes(Path(path).read_bytes())

    def build(self) -> DigitNet:
        """A model in eval mode with these weights (partial state dicts fill in from nothing)."""
        model = DigitNet(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def head_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable (non-frozen) entries of a full state dict: what a personal checkpoint stores."""
    return {k: v for k, v in state_dict.items() if not k.startswith(FROZEN_PREFIXES)}


def merge_state(base: Checkpoint, personal: Checkpoint | None) -> dict[str, torch.Tensor]:
    """A full state dict: the base weights with the personal head (if any) laid over them.

    Only head entries are taken from ``personal``: the trunk is always the base's, which is what
    lets recognition run the trunk once for both models.
    """
    state = dict(base.state_dict)
    if personal is not None:
        state.update(head_state(personal.state_dict))
    return state


# Package data (core/weights/base.pt): found the same way in a checkout and in an installed wheel.
DEFAULT_WEIGHTS = Path(str(resources.files("core") / "weights" / "base.pt"))


def load_base(path: str | Path | None = None) -> Checkpoint:
    """The base model: ``path``, else the shipped core/weights/base.pt. (DIGITBOT_BASE_WEIGHTS is read
    by the entry points, through digitbot.settings, and handed down as ``path``.)"""
    return Checkpoint.load(path or DEFAULT_WEIGHTS)
