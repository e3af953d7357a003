"""Digit crops as the bot serves them: MNIST *training* digits rendered into synthetic phone
photos (core.sim.photo_sim) and cut out again by core.vision.preprocess.

The base model learns from clean MNIST, but what it is shown in production are crops of phone
photos: blurred, resampled, stroke-normalised, sometimes with a remnant of a paper line or a
shadow. A short training stage on such crops closes that gap. A photo's crops are kept only when
the pipeline found as many digits as were drawn (then the i-th crop is the i-th digit); the rest
would teach wrong labels. Deterministic: photos are rendered in fixed chunks, each with its own
seed, so the result does not depend on how many processes render them.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.model.data import load_mnist
from core.sim.photo_sim import STYLES, photo_set
from core.vision.preprocess import preprocess

CHUNK_PHOTOS = 100


@dataclass
class PhotoCrops:
    images: torch.Tensor  # (N, 28, 28) uint8, MNIST-style
    labels: torch.Tensor  # (N,) int64
    photos: int  # rendered
    kept_photos: int  # whose digit count the pipeline got right
    seed: int = 0
    style: str = "classic"  # of the photos (core.sim.photo_sim)

    def save(self, path: str | Path) -> None:
        torch.save({"images": self.images, "labels": self.labels, "photos": self.photos,
                    "kept_photos": self.kept_photos, "seed": self.seed,
                    "style": self.style}, path)

    @staticmethod
    def concat(parts: list[PhotoCrops]) -> PhotoCrops:
        """Several crop sets (e.g. of different styles) as one."""
        if len(parts) == 1:
            return parts[0]
        return PhotoCrops(images=torch.cat([p.images for p in parts]), labels=torch.cat([p.labels for p in parts]),
                          photos=sum(p.photos for p in parts), kept_photos=sum(p.kept_photos for p in parts),
                          seed=parts[0].seed, style="+".join(p.style for p in parts))

    @staticmethod
    def load(path: str | Path) -> PhotoCrops:
        data = torch.load(path, weights_only=True)
        return PhotoCrops(images=data["images"], labels=data["labels"], photos=int(data["photos"]),
                          kept_photos=int(data["kept_photos"]), seed=int(data["seed"]),
                          style=str(data.get("style", "classic")))


def _render_chunk(task: tuple[int, int, bool, str | None, str]) -> tuple[np.ndarray, np.ndarray, int]:
    seed, count, row, data_dir, style = task
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    images, labels = load_mnist(train=True, directory=data_dir)
    photos = photo_set(images.numpy(), labels.numpy(), count, (2, 8) if row else (1, 1), seed, style)
    crops: list[np.ndarray] = []
    crop_labels: list[int] = []
    kept = 0
    for photo in photos:
        # Every look's candidate is one the bot may serve; the first with the right count is kept.
        candidates = preprocess(photo.data, every_look=True).candidates
        digits = next((c.digits for c in candidates if len(c.digits) == len(photo.labels)), None)
        if digits is not None:
            kept += 1
            crops.extend(d.image for d in digits)
            crop_labels.extend(photo.labels)
    empty = np.zeros((0, 28, 28), np.uint8)
    return (np.stack(crops) if crops else empty), np.array(crop_labels, np.int64), kept


def render_crops(photos: int, *, seed: int, data_dir: str | Path | None = None, workers: int = 2,
                 style: str = "classic") -> PhotoCrops:
    """Crops from ``photos`` synthetic photos (rounded up to whole chunks) of MNIST training digits,
    in a core.sim.photo_sim style."""
    chunks = max(1, -(-photos // CHUNK_PHOTOS))
    size = min(photos, CHUNK_PHOTOS) if photos > 0 else 0
    directory = str(data_dir) if data_dir is not None else None
    # Every other chunk holds rows of 2-8 digits (where neighbours, paper lines and uneven
    # spacing leave their marks on the crops), the rest single digits.
    tasks = [(seed * 100_000 + k, size, k % 2 == 1, directory, style) for k in range(chunks)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render_chunk, tasks))
    else:
        results = [_render_chunk(task) for task in tasks]
    return PhotoCrops(images=torch.from_numpy(np.concatenate([r[0] for r in results])),
                      labels=torch.from_numpy(np.concatenate([r[1] for r in results])),
                      photos=size * chunks, kept_photos=sum(r[2] for r in results), seed=seed, style=style)


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=None, help="MNIST folder (default: the shared data)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--style", choices=list(STYLES), default="classic",
                        help="photo style: classic (upscaled MNIST strokes) or thin (real pen widths)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    crops = render_crops(args.photos, seed=args.seed, data_dir=args.data, workers=args.workers, style=args.style)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    crops.save(args.out)
    print(f"{len(crops.labels)} crops from {crops.kept_photos}/{crops.photos} photos "
          f"({time.perf_counter() - started:.0f}s) -> {args.out}")


if __name__ == "__main__":
    main()
