"""Personalisation benchmark: simulated users, 10/20/50/100 labels, base vs personal vs combined.

For each simulated user (core.personal_data; ``--split eval`` users were never used for tuning)
the first k samples are the labels, the samples after the first 100 are the user's *new* samples.
Reports accuracy on the new samples of the base model, the personal model alone, the combined
answer (personal when its calibrated confidence clears the threshold, else base; via
core.recognize exactly as served), the answer served after the gate (combined if promoted, else
base), and MNIST test accuracy (all 10,000) of the base, the personal model and the combined rule.

    .venv/bin/python bench/bench_personalisation.py --split eval --out docs/bench_personalisation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.calibrate import MnistProbe, calibrated_probabilities, combine
from core.finetune import FinetuneConfig, finetune_user, head_state
from core.model import load_base
from core.personal_data import simulated_users
from core.recognize import PersonalModel, Recognizer

LABEL_COUNTS = (10, 20, 50, 100)
FIRST_NEW = 100  # new samples start after the largest label count


def mnist_row(probe: MnistProbe, personal: PersonalModel, base_temperature: float) -> dict[str, float]:
    assert personal.checkpoint is not None
    logits = probe.logits(head_state(personal.checkpoint.state_dict))
    personal_probs = calibrated_probabilities(logits, personal.temperature)
    base_probs = calibrated_probabilities(probe.base_logits, base_temperature)
    combined = combine(personal_probs, base_probs, personal.threshold)
    labels = probe.labels
    return {"mnist_personal": float((logits.argmax(1) == labels).float().mean()),
            "mnist_combined": float((combined.digits == labels).float().mean())}


def accuracy(recognizer: Recognizer, images: np.ndarray, labels: np.ndarray,
             personal: PersonalModel | None) -> float:
    predictions = recognizer.classify(images, personal)
    return float(np.mean([p.digit == y for p, y in zip(predictions, labels, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="eval", choices=("dev", "eval"))
    parser.add_argument("--samples", type=int, default=400, help="samples per styled user")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="fine-tune seed")
    parser.add_argument("--user-seed", type=int, default=0, help="which simulated samples")
    parser.add_argument("--max-users", type=int, default=0, help="only the first N users (smoke runs)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = load_base()
    probe = MnistProbe(base, subset=0, device="cpu")  # all 10,000 MNIST test digits
    base_temperature = float(base.meta.get("temperature", probe.base_temperature))
    recognizer = Recognizer(base, base_temperature=base_temperature)
    mnist_base = probe.accuracy()
    config = FinetuneConfig(seed=args.seed)
    rows = []
    users = simulated_users(args.split, n=args.samples, seed=args.user_seed)
    for user in users[:args.max_users or len(users)]:
        new_images, new_labels = user.images[FIRST_NEW:], user.labels[FIRST_NEW:]
        base_acc = accuracy(recognizer, new_images, new_labels, None)
        for k in LABEL_COUNTS:
            started = time.perf_counter()
            result = finetune_user(base, user.images[:k], user.labels[:k], config=config, device="cpu")
            seconds = time.perf_counter() - started
            personal = PersonalModel(result.checkpoint)
            combined_acc = accuracy(recognizer, new_images, new_labels, personal)
            always_personal = PersonalModel(result.checkpoint)
            always_personal.threshold = 0.0
            row = {"user": user.name, "labels": k, "new_samples": len(new_labels),
                   "base": base_acc, "personal": accuracy(recognizer, new_images, new_labels, always_personal),
                   "combined": combined_acc, "promoted": result.decision.promote,
                   "served": combined_acc if result.decision.promote else base_acc,
                   "mnist_base": mnist_base, **mnist_row(probe, personal, base_temperature),
                   "threshold": personal.threshold, "temperature": personal.temperature,
                   "seconds": seconds, "reason": result.decision.reason}
            rows.append(row)
            print(f"{user.name:22s} k={k:3d}  base {base_acc:.3f}  personal {row['personal']:.3f}  "
                  f"combined {combined_acc:.3f}  served {row['served']:.3f}  "
                  f"MNIST {mnist_base:.4f} -> personal {row['mnist_personal']:.4f} / combined "
                  f"{row['mnist_combined']:.4f}  ({seconds:.1f}s, {'promoted' if row['promoted'] else 'rejected'})",
                  flush=True)
    print_summary(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def print_summary(rows: list[dict]) -> None:
    print("\n| labels | base acc | personal acc | combined acc | served acc | error served / base "
          "| MNIST base | MNIST personal | MNIST combined | promoted |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in LABEL_COUNTS:
        chosen = [r for r in rows if r["labels"] == k]

        def mean(key: str, chosen: list[dict] = chosen) -> float:
            return float(np.mean([r[key] for r in chosen]))

        ratio = (1 - mean("served")) / max(1 - mean("base"), 1e-9)
        print(f"| {k} | {mean('base'):.2%} | {mean('personal'):.2%} | {mean('combined'):.2%} | "
              f"{mean('served'):.2%} | {ratio:.2f} | {mean('mnist_base'):.2%} | {mean('mnist_personal'):.2%} | "
              f"{mean('mnist_combined'):.2%} | {sum(r['promoted'] for r in chosen)}/{len(chosen)} |")
    worst = min(r["mnist_combined"] - r["mnist_base"] for r in rows)
    worst_personal = min(r["mnist_personal"] - r["mnist_base"] for r in rows)
    print(f"\nworst MNIST change over all users and label counts: combined {100 * worst:+.2f} points, "
          f"personal alone {100 * worst_personal:+.2f} points")
    for k in (50, 100):
        per_user = [(1 - r["served"]) / max(1 - r["base"], 1e-9) for r in rows if r["labels"] == k]
        print(f"k={k}: per-user error ratio served/base: " + ", ".join(f"{x:.2f}" for x in per_user))


if __name__ == "__main__":
    main()
