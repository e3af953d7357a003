"""Choose the personal memory's constants (core.memory.MemoryConfig) on simulated writers.

For each writer (core.personal_data; tune with ``--split dev``, report with ``--split eval``) the
first k samples are remembered and the samples after the first 100 are read, for every
(width, strength) on the grid: classification error with the memory vs the base, and
the MNIST test accuracy (all 10,000) with each writer's 100-sample memory (the worst writer counts).

    .venv/bin/python -m bench.tune_memory --split dev
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from core.data import load_mnist
from core.memory import MemoryConfig, PersonalMemory
from core.model import load_base
from core.personal_data import simulated_users
from core.recognize import Recognizer

LABEL_COUNTS = (1, 5, 10, 20, 50, 100)
FIRST_NEW = 100
WIDTHS = (0.08, 0.1, 0.12)
STRENGTHS = (16.0, 32.0, 64.0)


def scored(recognizer: Recognizer, images: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Base calibrated probabilities (N,10) and penultimate features (N,D) of uint8 crops."""
    chunks = [recognizer.probabilities(images[s:s + 2048])[0] for s in range(0, len(images), 2048)]
    features = torch.cat([recognizer.embed(images[s:s + 2048]) for s in range(0, len(images), 2048)])
    return np.concatenate(chunks), features


def error(memory: PersonalMemory, probs: np.ndarray, features: torch.Tensor, remembered: torch.Tensor,
          labels: np.ndarray) -> float:
    votes = memory.evidence(features, remembered).numpy()
    return float(np.mean(memory.blend(probs, votes).argmax(1) != labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev", choices=("dev", "eval"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--grid", action="store_true", help="every grid point (else the shipped config only)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    recognizer = Recognizer(load_base())
    mnist_images, mnist_labels = load_mnist(train=False)
    mnist_probs, mnist_features = scored(recognizer, mnist_images.numpy())
    mnist_labels_np = mnist_labels.numpy()
    mnist_base = float(np.mean(mnist_probs.argmax(1) == mnist_labels_np))
    users = simulated_users(args.split, n=args.samples)
    prepared = []
    for user in users:
        probs, features = scored(recognizer, user.images)
        prepared.append((user, probs, features))
    configs = ([MemoryConfig(width=w, strength=h) for w, h in itertools.product(WIDTHS, STRENGTHS)]
               if args.grid else [MemoryConfig()])
    print(f"MNIST base {mnist_base:.2%}; writers: " + ", ".join(
        f"{u.name} base error {np.mean(p[FIRST_NEW:].argmax(1) != u.labels[FIRST_NEW:]):.1%}"
        for u, p, _ in prepared))
    for config in configs:
        ratios: dict[int, list[float]] = {k: [] for k in LABEL_COUNTS}
        worst_mnist = 0.0
        for user, probs, features in prepared:
            new = slice(FIRST_NEW, None)
            base_error = float(np.mean(probs[new].argmax(1) != user.labels[new]))
            errors = []
            for k in LABEL_COUNTS:
                memory = PersonalMemory(user.images[:k], user.labels[:k], config)
                remembered = torch.nn.functional.normalize(features[:k], dim=1)
                errors.append(error(memory, probs[new], features[new], remembered, user.labels[new]))
                ratios[k].append(errors[-1] / max(base_error, 1e-9))
                if k == LABEL_COUNTS[-1]:
                    drop = mnist_base - (1 - error(memory, mnist_probs, mnist_features, remembered,
                                                   mnist_labels_np))
                    worst_mnist = max(worst_mnist, drop)
            if not args.grid:
                print(f"  {user.name:<20} base error {base_error:.1%}; with the memory of k labels: " + "  ".join(
                    f"{k}: {e:.1%}" for k, e in zip(LABEL_COUNTS, errors, strict=True)))
        summary = "  ".join(f"k={k}: {np.mean(v):.2f}" for k, v in ratios.items())
        print(f"width {config.width:<5} strength {config.strength:<5} error/base {summary}  "
              f"worst MNIST drop {100 * worst_mnist:.2f} points", flush=True)


if __name__ == "__main__":
    main()
