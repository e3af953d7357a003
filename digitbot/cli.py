"""The `digitbot` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_train_base(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.train import TrainConfig, plot_curves, train_base

    if args.dry_run:
        config = TrainConfig(epochs=1, train_subset=1024, test_subset=500, seed=args.seed)
    else:
        config = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)
    checkpoint, curves = train_base(config, data_dir=args.data)
    out = Path(args.out)
    checkpoint.save(out)
    plot_curves(curves, out.with_suffix(".curves.png"))
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB), "
          f"MNIST test accuracy {checkpoint.metrics['mnist_test_accuracy']:.4%}, "
          f"curves {out.with_suffix('.curves.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitbot", description="Handwritten digit bot")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train-base", help="train the base model on MNIST")
    train.add_argument("--data", default=None, help="MNIST folder (IDX files, gz or not)")
    train.add_argument("--out", default="weights/base.pt")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--threads", type=int, default=0)
    train.add_argument("--dry-run", action="store_true", help="one short epoch on a subset")
    train.set_defaults(func=_cmd_train_base)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
