"""Train core.vision.ink_net on simulated photos whose true ink is known (core.sim.photo_sim, MNIST training
digits only; never real photos).

    python -m core.vision.train_ink --photos 1600 --steps 800 --cache var --out core/weights/ink.pt [--dry-run]

Each photo is decoded exactly as the bot decodes it (core.vision.preprocess), so the network learns on the
working images it will see; the target is the simulator's ink brought to that size
(core.vision.ink_net.resize_truth).
"""

from __future__ import annotations

import argparse
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from core.model.data import load_mnist
from core.sim.photo_sim import photo_set
from core.vision.ink_net import WEIGHTS, InkFinder, InkNet, inputs, resize_truth, save
from core.vision.plain_ink import dark_ink
from core.vision.preprocess import decode_working

CROP = 96
# Share of the photos drawn in the thin-pen style (the rest classic: thick strokes, dark boards).
THIN_SHARE = 0.75


@dataclass
class Example:
    planes: np.ndarray  # (2, H, W) float16 network inputs
    target: np.ndarray  # (H, W) uint8, ink 255


def _examples(seed: int, count: int, style: str) -> list[Example]:
    images, labels = load_mnist(train=True)
    examples = []
    for photo in photo_set(images.numpy(), labels.numpy(), count, (1, 8), seed, style, truth=True):
        gray = decode_working(photo.data)
        if gray is None or photo.ink is None:
            continue
        gray, _ = dark_ink(gray)
        target = np.round(resize_truth(photo.ink, gray.shape) * 255).astype(np.uint8)
        examples.append(Example(inputs(gray).astype(np.float16), target))
    return examples


def build(count: int, seed: int, workers: int = 2) -> list[Example]:
    """`count` photos (THIN_SHARE thin pen), rendered and decoded in `workers` processes."""
    chunk = 50
    jobs = []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        style = "thin" if (start // chunk) % 4 < round(4 * THIN_SHARE) else "classic"
        jobs.append((seed * 1000 + start // chunk, n, style))
    examples: list[Example] = []
    with ProcessPoolExecutor(workers) as pool:
        for part in tqdm(pool.map(_examples, *zip(*jobs, strict=True)), total=len(jobs), desc="render"):
            examples.extend(part)
    return examples


def cached(count: int, seed: int, cache: Path | None) -> list[Example]:
    """build(), kept in `cache` (a folder) to train again without rendering again."""
    if cache is None:
        return build(count, seed)
    path = cache / f"ink_examples_{seed}_{count}.pkl"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(build(count, seed)))
    examples: list[Example] = pickle.loads(path.read_bytes())
    return examples


def _batch(examples: list[Example], rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CROP x CROP windows, most of them over ink (padded with paper when a photo is smaller)."""
    xs, ys = [], []
    for index in rng.integers(0, len(examples), size):
        example = examples[index]
        _, height, width = example.planes.shape
        planes = np.pad(example.planes, ((0, 0), (0, max(0, CROP - height)), (0, max(0, CROP - width))), mode="edge")
        target = np.pad(example.target, ((0, max(0, CROP - height)), (0, max(0, CROP - width))))
        height, width = target.shape
        ink_y, ink_x = np.nonzero(target > 127)
        if len(ink_y) and rng.random() < 0.7:
            pick = rng.integers(len(ink_y))
            y = int(np.clip(ink_y[pick] - rng.integers(CROP), 0, height - CROP))
            x = int(np.clip(ink_x[pick] - rng.integers(CROP), 0, width - CROP))
        else:
            y, x = int(rng.integers(height - CROP + 1)), int(rng.integers(width - CROP + 1))
        xs.append(planes[:, y:y + CROP, x:x + CROP].astype(np.float32))
        ys.append(target[None, y:y + CROP, x:x + CROP].astype(np.float32) / 255)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Ink is 1-5% of a photo's pixels: weigh it up so that a faint stroke is not given away.
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))


@torch.inference_mode()
def evaluate(model: InkNet, examples: list[Example]) -> dict[str, float]:
    """Pixel precision, recall and F1 of ink (target >= 0.5) at probability 0.5, whole photos."""
    model.eval()
    hits = predicted = actual = 0
    for example in examples:
        probability = torch.sigmoid(model(torch.from_numpy(example.planes.astype(np.float32))[None]))[0, 0].numpy()
        ink, truth = probability >= 0.5, example.target >= 128
        hits += int((ink & truth).sum())
        predicted += int(ink.sum())
        actual += int(truth.sum())
    model.train()
    precision, recall = hits / max(predicted, 1), hits / max(actual, 1)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-9)}


def train(model: InkNet, examples: list[Example], *, steps: int, batch: int, lr: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    progress = tqdm(range(steps), desc="train")
    for _ in progress:
        x, y = _batch(examples, rng, batch)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1600)
    parser.add_argument("--val-photos", type=int, default=200)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--cache", type=Path, help="keep the rendered photos in this folder (e.g. var/)")
    parser.add_argument("--resume", type=Path, help="start from this network (e.g. the shipped one)")
    parser.add_argument("--extra-photos", type=int, default=0, help="more training photos, from seed + 2")
    parser.add_argument("--dry-run", action="store_true", help="a few photos and steps, to check the plumbing")
    args = parser.parse_args()
    if args.dry_run:
        args.photos, args.val_photos, args.steps = 20, 8, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    examples = cached(args.photos, args.seed, args.cache)
    if args.extra_photos:
        examples += cached(args.extra_photos, args.seed + 2, args.cache)
    held_out = cached(args.val_photos, args.seed + 1, args.cache)
    print(f"{len(examples)} training photos, {len(held_out)} held out, rendered in {time.time() - started:.0f} s")
    model = InkFinder(args.resume).model if args.resume else InkNet()
    train(model, examples, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    metrics = evaluate(model, held_out)
    print(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    resumed = InkFinder(args.resume).metrics if args.resume else {}
    steps = args.steps + resumed.get("steps", 0.0)
    save(model, args.out, {**metrics, "photos": float(len(examples)), "steps": steps})
    print(f"saved {args.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
