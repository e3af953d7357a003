"""Base-model training recipe: MNIST + batched augmentation, AdamW + OneCycle, weight EMA.

Reproducible: one seed drives initialisation, shuffling and augmentation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from core.model.augment import AugmentConfig, augment
from core.model.data import load_mnist, mnist_checksum
from core.model.network import Checkpoint, DigitNet, ModelConfig, normalize, pick_device
from core.personal.calibrate import fit_temperature

if TYPE_CHECKING:
    from core.sim.photo_crops import PhotoCrops


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    ema_decay: float = 0.999
    seed: int = 1
    train_subset: int = 0  # 0 = all 60,000; small values make a smoke run
    test_subset: int = 0
    threads: int = 0  # 0 = torch default
    bf16: bool = False  # bfloat16 autocast for convs/matmuls (CPU with AVX512-BF16/AMX, or CUDA)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # A short second stage from the first stage's EMA weights: low learning rate, milder
    # augmentation. Heavy augmentation buys robustness to photos; the polish recovers the last
    # tenths of a point on clean digits. Seeded on its own, so resuming from a stage-1 file
    # reproduces the one-command result.
    polish_epochs: int = 0
    polish_lr: float = 3e-4
    polish_augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        rotate_deg=8.0, shift=0.08, scale=(0.92, 1.08), shear=0.1, elastic_p=0.2, thickness_p=0.1))
    # A third stage on MNIST plus crops of synthetic phone photos (core.sim.photo_crops), with the
    # polish augmentation: the model then knows what the pipeline's crops look like (blur,
    # resampling, line and shadow remnants), not only clean scans. The crops are repeated so that
    # they are a sizeable share of each epoch without crowding out MNIST.
    photo_epochs: int = 0
    photo_lr: float = 2e-3
    photo_repeats: int = 3


@torch.no_grad()
def _logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
            batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalize(images[i:i + batch_size].to(device)))
                      for i in range(0, len(images), batch_size)])


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return int((logits.argmax(1).cpu() == labels).sum()) / max(len(labels), 1)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: torch.device, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on uint8 images (N,28,28)."""
    return _accuracy(_logits(model, images, device, batch_size), labels)


def train_epoch(model: DigitNet, ema: AveragedModel, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, images: torch.Tensor,
                labels: torch.Tensor, config: TrainConfig, augment_config: AugmentConfig,
                generator: torch.Generator, device: torch.device, desc: str) -> float:
    model.train()
    order = torch.randperm(len(images), generator=generator)
    total, count = 0.0, 0
    batches = range(0, len(images) - config.batch_size + 1, config.batch_size)
    for start in tqdm(batches, desc=desc, leave=False, mininterval=2.0):
        index = order[start:start + config.batch_size]
        x = images[index].to(device, non_blocking=True).float().unsqueeze(1) / 255.0
        x = augment(x, augment_config, generator=generator if device.type == "cpu" else None)
        x = (x - 0.1307) / 0.3081
        y = labels[index].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        total += loss.item() * len(index)
        count += len(index)
    return total / max(count, 1)


def _stage(model: DigitNet, *, epochs: int, lr: float, augment_config: AugmentConfig, seed: int,
           pct_start: float, data: tuple[torch.Tensor, ...], config: TrainConfig, device: torch.device,
           curves: dict[str, list[float]], log: Callable[[str], None], name: str) -> AveragedModel:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, test_x, test_y = data
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(len(train_x) // config.batch_size, 1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=pct_start)
    started = time.time()
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, ema, optimizer, scheduler, train_x, train_y, config, augment_config,
                           generator, device, desc=f"{name} epoch {epoch}/{epochs}")
        # The EMA weights are what ships, so they are evaluated every epoch; the raw model sometimes.
        acc = evaluate(model, test_x, test_y, device) if epoch % 5 == 0 or epoch == epochs else float("nan")
        ema_acc = evaluate(ema.module, test_x, test_y, device)
        curves["loss"].append(loss)
        curves["test_acc"].append(acc)
        curves["ema_test_acc"].append(ema_acc)
        log(f"{name} epoch {epoch:3d}  loss {loss:.4f}  test {acc:.4%}  ema {ema_acc:.4%}  "
            f"{time.time() - started:.0f}s")
    return ema


def train_base(config: TrainConfig, data_dir: str | Path | None = None, log: Callable[[str], None] = print,
               resume: Checkpoint | None = None,
               photo_crops: PhotoCrops | None = None) -> tuple[Checkpoint, dict[str, list[float]]]:
    """Train the base model; returns the checkpoint (EMA weights) and the training curves.

    With ``resume`` (a checkpoint of an earlier stage of the same recipe) stage 1 is skipped and
    the later stages asked for run from it. The photo stage needs ``photo_crops``.
    """
    if config.photo_epochs and photo_crops is None:
        raise ValueError("the photo stage needs photo crops (python -m core.sim.photo_crops)")
    photo_stage = photo_crops if config.photo_epochs else None
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device()
    train_x, train_y = load_mnist(train=True, directory=data_dir)
    test_x, test_y = load_mnist(train=False, directory=data_dir)
    if config.train_subset:
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    if config.test_subset:
        test_x, test_y = test_x[:config.test_subset], test_y[:config.test_subset]
    if device.type == "cuda":
        train_x, train_y = train_x.to(device), train_y.to(device)
    data = (train_x, train_y, test_x, test_y)
    curves: dict[str, list[float]] = {"loss": [], "test_acc": [], "ema_test_acc": []}
    started = time.time()

    if resume is None:
        torch.manual_seed(config.seed)
        model = DigitNet(config.model).to(device)
        ema = _stage(model, epochs=config.epochs, lr=config.lr, augment_config=config.augment, seed=config.seed,
                     pct_start=0.2, data=data, config=config, device=device, curves=curves, log=log, name="stage 1")
        model = ema.module  # type: ignore[assignment]
    else:
        model = DigitNet(config.model).to(device)
        model.load_state_dict(resume.state_dict)
    if config.polish_epochs:
        ema = _stage(model, epochs=config.polish_epochs, lr=config.polish_lr, augment_config=config.polish_augment,
                     seed=config.seed + 1000, pct_start=0.1, data=data, config=config, device=device,
                     curves=curves, log=log, name="polish")
        model = ema.module  # type: ignore[assignment]
    if photo_stage is not None:
        crops_x = photo_stage.images.to(train_x.device)
        crops_y = photo_stage.labels.to(train_y.device)
        mixed = (torch.cat([train_x] + [crops_x] * config.photo_repeats),
                 torch.cat([train_y] + [crops_y] * config.photo_repeats), test_x, test_y)
        ema = _stage(model, epochs=config.photo_epochs, lr=config.photo_lr, augment_config=config.polish_augment,
                     seed=config.seed + 2000, pct_start=0.1, data=mixed, config=config, device=device,
                     curves=curves, log=log, name="photo")
        model = ema.module  # type: ignore[assignment]

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    test_logits = _logits(model, test_x, device)
    metrics = {"mnist_test_accuracy": _accuracy(test_logits, test_y),
               "mnist_test_size": float(len(test_x)),
               "train_seconds": time.time() - started}
    meta: dict[str, object] = {
        "recipe": dataclasses.asdict(config), "data_sha256": mnist_checksum(data_dir),
        "device": str(device), "torch": str(torch.__version__),
        # Every component scales the base logits by this (core.personal.calibrate.fit_base_temperature).
        "temperature": fit_temperature(test_logits, test_y.to(device))}
    if resume is not None:
        meta["resumed_from"] = {"metrics": resume.metrics, "recipe": resume.meta.get("recipe")}
    if photo_stage is not None:
        meta["photo_crops"] = {"crops": len(photo_stage.labels), "photos": photo_stage.photos,
                               "kept_photos": photo_stage.kept_photos, "seed": photo_stage.seed,
                               "style": photo_stage.style}
    return Checkpoint(state_dict=state, config=config.model, metrics=metrics, meta=meta), curves


def plot_curves(curves: dict[str, list[float]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(curves["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, curves["loss"])
    left.set(title="training loss", xlabel="epoch")
    right.plot(epochs, [100 * a for a in curves["test_acc"]], "o", label="model")
    right.plot(epochs, [100 * a for a in curves["ema_test_acc"]], label="EMA")
    right.set(title="MNIST test accuracy (%)", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
