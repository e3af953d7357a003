"""Tune the fine-tune recipe and check the gate on the DEV writers (issue 12): never on "eval".

For each recipe (``--recipes``, names below) every dev writer (core.sim.crop_writers, ``--split dev``)
is fine-tuned on its first k labels (k in ``--labels``), all users and label counts as one batch
(core.personal.batched_finetune), and read on its samples after the first 100 (never labelled):

* base / personal / combined error on those new samples (combined = personal with the calibrated
  base fallback, as served), served = combined when the gate promoted it, else the base;
* MNIST (all 10,000 test digits) of the personal model alone and of the combined rule vs the base;
* the gate: how often it promoted, and how often a promotion made the new samples worse
  ("bad promotions") or a rejection kept the base where the candidate was better ("missed").

    .venv/bin/python bench/tune_finetune.py --threads 1 --recipes current,fc_lr3 --samples 300
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from core.model.network import Checkpoint, load_base
from core.personal.batched_finetune import UserSamples, finetune_users
from core.personal.calibrate import MnistProbe, calibrated_probabilities, combine, head_logits, trunk_features
from core.personal.finetune import LIGHT_AUGMENT, FinetuneConfig
from core.sim.crop_writers import simulated_users

FIRST_NEW = 100
OLD = FinetuneConfig(trainable=("conv3.", "bn3.", "fc1.", "fc2."), lr=1e-3, steps=60, l2_pull=1e-3)
FC = ("fc1.", "fc2.")
STROKE_AUGMENT = dataclasses.replace(LIGHT_AUGMENT, thickness_p=0.3)
RECIPES = {
    "current": OLD,
    "fc": dataclasses.replace(OLD, trainable=FC),
    "fc_lr3": dataclasses.replace(OLD, trainable=FC, lr=3e-3),
    "fc_lr3_s100": dataclasses.replace(OLD, trainable=FC, lr=3e-3, steps=100),
    "fc_lr3_s100_l2lo": dataclasses.replace(OLD, trainable=FC, lr=3e-3, steps=100, l2_pull=1e-4),
    "fc_lr3_s100_thick": dataclasses.replace(OLD, trainable=FC, lr=3e-3, steps=100, augment=STROKE_AUGMENT),
    "fc_lr3_s100_r16": dataclasses.replace(OLD, trainable=FC, lr=3e-3, steps=100, replay_batch=16),
    "fc_lr1e2_s100": dataclasses.replace(OLD, trainable=FC, lr=1e-2, steps=100),
    "fc2_lr1e2_s100": dataclasses.replace(OLD, trainable=("fc2.",), lr=1e-2, steps=100),
    "full_lr3_s100": dataclasses.replace(OLD, lr=3e-3, steps=100),
    "default": FinetuneConfig(),
}


def read(base: Checkpoint, checkpoint: Checkpoint, features: torch.Tensor, base_probs: torch.Tensor,
         base_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(personal digits, combined digits) on trunk features."""
    model = base.build()
    model.load_state_dict(checkpoint.state_dict, strict=False)
    probs = calibrated_probabilities(head_logits(model, features), float(checkpoint.meta["temperature"]))
    combined = combine(probs, base_probs, float(checkpoint.meta["threshold"]))
    return probs.argmax(1), combined.digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="current,default")
    parser.add_argument("--labels", default="50,100")
    parser.add_argument("--samples", type=int, default=300, help="samples per styled writer")
    parser.add_argument("--split", default="dev", choices=("dev", "eval"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-users", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base()
    probe = MnistProbe(base, subset=0, device="cpu")
    base_t = float(base.meta.get("temperature", probe.base_temperature))
    mnist_base_probs = calibrated_probabilities(probe.base_logits, base_t)
    mnist_base = float((probe.base_logits.argmax(1) == probe.labels).float().mean())
    users = simulated_users(args.split, n=args.samples)
    users = users[:args.max_users or len(users)]
    counts = [int(k) for k in args.labels.split(",")]
    net = base.build()
    new = []
    for user in users:
        features = trunk_features(net, torch.from_numpy(user.images[FIRST_NEW:]), torch.device("cpu"))
        labels = torch.from_numpy(user.labels[FIRST_NEW:])
        base_probs = calibrated_probabilities(head_logits(net, features), base_t)
        new.append((features, labels, base_probs))
    print(f"{len(users)} {args.split} writers, new samples {[len(n[1]) for n in new]}, MNIST base {mnist_base:.4f}")
    for name in args.recipes.split(","):
        config = RECIPES[name]
        batch = [UserSamples(u.images[:k], u.labels[:k]) for k in counts for u in users]
        started, cpu = time.perf_counter(), time.process_time()
        results = finetune_users(base, batch, config=config, device="cpu")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"\n== {name}: {config.trainable} lr {config.lr} steps {config.steps} l2 {config.l2_pull} "
              f"replay {config.replay_batch} augment thickness {config.augment.thickness_p if config.augment else '-'}"
              f" ({seconds:.0f} s wall, {cpu / len(batch):.2f} s CPU per user)")
        for k in counts:
            rows = []
            for i, user in enumerate(users):
                result = results[counts.index(k) * len(users) + i]
                features, labels, base_probs = new[i]
                personal, combined = read(base, result.checkpoint, features, base_probs, base_t)
                base_err = float((base_probs.argmax(1) != labels).float().mean())
                comb_err = float((combined != labels).float().mean())
                served_err = comb_err if result.decision.promote else base_err
                mnist_personal, mnist_combined = read(base, result.checkpoint, probe.features, mnist_base_probs, base_t)
                m = result.metrics
                rows.append((base_err, float((personal != labels).float().mean()), comb_err, served_err,
                             float((mnist_personal == probe.labels).float().mean()) - mnist_base,
                             float((mnist_combined == probe.labels).float().mean()) - mnist_base,
                             result.decision.promote, m.heldout_before, m.heldout_after, m.best_step))
                print(f"  k={k:3d} {user.name:22s} err base {base_err:.3f} personal {rows[-1][1]:.3f} combined "
                      f"{comb_err:.3f} served {served_err:.3f} | MNIST {100 * rows[-1][4]:+.2f}/"
                      f"{100 * rows[-1][5]:+.2f} "
                      f"pts | CV {m.heldout_before:.3f}->{m.heldout_after:.3f} step {m.best_step} "
                      f"{'PROMOTED' if result.decision.promote else 'kept'}")
            a = np.array([r[:6] for r in rows], dtype=float)
            promoted = [r[6] for r in rows]
            bad = sum(p and r[2] > r[0] for p, r in zip(promoted, rows, strict=True))
            missed = sum((not p) and r[2] < r[0] for p, r in zip(promoted, rows, strict=True))
            ratio = a[:, 3].mean() / max(a[:, 0].mean(), 1e-9)
            print(f"  k={k}: error base {a[:, 0].mean():.3f} personal {a[:, 1].mean():.3f} combined "
                  f"{a[:, 2].mean():.3f} served {a[:, 3].mean():.3f} (served/base {ratio:.2f}; personal/base "
                  f"{a[:, 1].mean() / max(a[:, 0].mean(), 1e-9):.2f}); worst writer served/base "
                  f"{max(r[3] / max(r[0], 1e-9) for r in rows):.2f}; MNIST worst personal "
                  f"{100 * a[:, 4].min():+.2f} combined {100 * a[:, 5].min():+.2f} pts; promoted "
                  f"{sum(promoted)}/{len(rows)}, bad promotions {bad}, missed {missed}")


if __name__ == "__main__":
    main()
