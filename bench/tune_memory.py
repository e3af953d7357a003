"""Choose the personal memory's constants (core.personal.memory.MemoryConfig) on simulated writers.

For each writer (core.sim.crop_writers; tune with ``--split dev``, report with ``--split eval``) the
first k samples are remembered and the samples after the first 100 are read, for every
(views, width, strength) on the grid, **as served**: each memory is first calibrated exactly as
core.recognize.Recognizer does (core.personal.memory.PersonalMemory.fit_scale on the same 2,000 MNIST test
digits), then it reads the writer's new samples (classification error vs the base's) and the other
8,000 MNIST test digits (the worst drop over writers and k; the probe's own digits are left out, so
the MNIST figure is not the one the calibration was fitted on).

The target line counts the writers the base misreads >= 10% (issue 12): their summed misses with
the memory of 10 labels vs the base's.

    .venv/bin/python -m bench.tune_memory --split dev --grid
    .venv/bin/python -m bench.tune_memory --split eval   # the shipped constants
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import torch

from core.model.data import load_mnist
from core.model.network import load_base
from core.personal.calibrate import mnist_probe_indices
from core.personal.memory import MemoryConfig, PersonalMemory
from core.recognize import Recognizer
from core.sim.crop_writers import simulated_users

LABEL_COUNTS = (1, 5, 10, 20, 50, 100)
FIRST_NEW = 100
PROBE = 2000  # as core.recognize.Recognizer's memory calibration
VIEWS = (1, 5, 9)
WIDTHS = (0.06, 0.08, 0.1, 0.12)
STRENGTHS = (16.0, 32.0, 64.0)


def scored(recognizer: Recognizer, images: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Base calibrated probabilities (N,10) and penultimate features (N,D) of uint8 crops."""
    chunks = [recognizer.probabilities(images[s:s + 2048])[0] for s in range(0, len(images), 2048)]
    features = torch.cat([recognizer.embed(images[s:s + 2048]) for s in range(0, len(images), 2048)])
    return np.concatenate(chunks), features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev", choices=("dev", "eval"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", action="store_true", help="every grid point (else the shipped config only)")
    parser.add_argument("--views", default=None, help="comma-separated views for the grid (default all)")
    parser.add_argument("--also", action="append", default=[], metavar="FIELD=VALUE,...",
                        help="another config to run beside the shipped one, e.g. views=1,width=0.08,strength=32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recognizer = Recognizer(load_base())
    mnist_images, mnist_labels = load_mnist(train=False)
    mnist_probs, mnist_features = scored(recognizer, mnist_images.numpy())
    labels_np = mnist_labels.numpy()
    probe = mnist_probe_indices(PROBE, len(labels_np)).numpy()
    rest = np.setdiff1d(np.arange(len(labels_np)), probe)
    probe_base = float(np.mean(mnist_probs[probe].argmax(1) == labels_np[probe]))
    rest_base = float(np.mean(mnist_probs[rest].argmax(1) == labels_np[rest]))
    users = simulated_users(args.split, n=args.samples)
    prepared = [(user, *scored(recognizer, user.images)) for user in users]
    shipped = MemoryConfig()
    views = [int(v) for v in args.views.split(",")] if args.views else list(VIEWS)
    configs = ([MemoryConfig(width=w, strength=h, views=v) for v, w, h in itertools.product(views, WIDTHS, STRENGTHS)]
               if args.grid else [shipped])
    for extra in args.also:
        pairs = dict(item.split("=") for item in extra.split(","))
        configs.append(dataclasses.replace(shipped, **{k: type(getattr(shipped, k))(v) for k, v in pairs.items()}))
    print(f"MNIST base {probe_base:.2%} (probe) / {rest_base:.2%} (other 8,000); writers: " + ", ".join(
        f"{u.name} base error {np.mean(p[FIRST_NEW:].argmax(1) != u.labels[FIRST_NEW:]):.1%}"
        for u, p, _ in prepared))
    remembered_by_views: dict[int, list[torch.Tensor]] = {}
    for config in configs:
        if config.views not in remembered_by_views:  # a crop's views do not depend on the others
            remembered_by_views[config.views] = [
                PersonalMemory(u.images[:FIRST_NEW], u.labels[:FIRST_NEW], config).embeddings(0, recognizer.embed)
                for u, _, _ in prepared]
        ratios: dict[int, list[float]] = {k: [] for k in LABEL_COUNTS}
        hard_misses = {"base": 0, "memory": 0}
        worst_mnist, scales = 0.0, []
        for (user, probs, features), all_remembered in zip(prepared, remembered_by_views[config.views], strict=True):
            new = slice(FIRST_NEW, None)
            base_error = float(np.mean(probs[new].argmax(1) != user.labels[new]))
            errors = []
            for k in LABEL_COUNTS:
                memory = PersonalMemory(user.images[:k], user.labels[:k], config)
                remembered = all_remembered[:k]
                mnist_votes = memory.evidence(mnist_features, remembered).numpy()
                scale = memory.fit_scale(mnist_probs[probe], mnist_votes[probe], labels_np[probe], probe_base)
                scales.append(scale)
                votes = memory.evidence(features[new], remembered).numpy()
                read = memory.blend(probs[new], votes, scale).argmax(1)
                errors.append(float(np.mean(read != user.labels[new])))
                ratios[k].append(errors[-1] / max(base_error, 1e-9))
                rest_accuracy = float(np.mean(memory.blend(mnist_probs[rest], mnist_votes[rest], scale).argmax(1)
                                              == labels_np[rest]))
                worst_mnist = max(worst_mnist, rest_base - rest_accuracy)
                if k == 10 and base_error >= 0.10:
                    hard_misses["base"] += int(np.sum(probs[new].argmax(1) != user.labels[new]))
                    hard_misses["memory"] += int(np.sum(read != user.labels[new]))
            if not args.grid:
                print(f"  {user.name:<20} base error {base_error:.1%}; with the memory of k labels: " + "  ".join(
                    f"{k}: {e:.1%}" for k, e in zip(LABEL_COUNTS, errors, strict=True)))
        summary = "  ".join(f"k={k}: {np.mean(v):.2f}" for k, v in ratios.items())
        fewer = 1 - hard_misses["memory"] / max(hard_misses["base"], 1)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "max_samples"}
        print(f"{fields}  error/base {summary}  | writers >=10%: misses after 10 labels {hard_misses['memory']} vs "
              f"{hard_misses['base']} ({fewer:.0%} fewer)  | worst MNIST drop (other 8,000) {100 * worst_mnist:.2f} "
              f"points; scale < 1 in {sum(s < 1 for s in scales)}/{len(scales)}", flush=True)


if __name__ == "__main__":
    main()
