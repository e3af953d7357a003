"""The `digitbot` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.recognize import PhotoReading


def _cmd_train_base(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.model.network import Checkpoint
    from core.model.train import TrainConfig, plot_curves, train_base
    from core.sim.photo_crops import PhotoCrops
    from digitbot.wiring import use_data_paths

    use_data_paths()
    photo_epochs = args.photo_epochs if args.photo_crops else 0
    if args.dry_run:
        config = TrainConfig(epochs=1, train_subset=1024, test_subset=500, seed=args.seed,
                             photo_epochs=min(photo_epochs, 1))
    else:
        config = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, bf16=args.bf16,
                             polish_epochs=args.polish_epochs, photo_epochs=photo_epochs, photo_lr=args.photo_lr)
    resume = Checkpoint.load(args.resume) if args.resume else None
    crops = PhotoCrops.concat([PhotoCrops.load(path) for path in args.photo_crops]) if args.photo_crops else None
    checkpoint, curves = train_base(config, data_dir=args.data, resume=resume, photo_crops=crops)
    out = Path(args.out)
    checkpoint.save(out)
    plot_curves(curves, out.with_suffix(".curves.png"))
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB), "
          f"MNIST test accuracy {checkpoint.metrics['mnist_test_accuracy']:.4%}, "
          f"curves {out.with_suffix('.curves.png')}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from core.model.network import load_base
    from core.recognize import PersonalModel, Recognizer
    from digitbot.wiring import use_data_paths

    use_data_paths()  # a personal model's memory is calibrated on MNIST
    recognizer = Recognizer(load_base(_base_weights(args)))
    personal = PersonalModel.from_bytes(Path(args.user_model).read_bytes()) if args.user_model else None
    failures = 0
    for index, name in enumerate(args.images):
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as error:
            reading_status, reading = f"unreadable: {error.strerror}", None
        else:
            reading = recognizer.read(data, personal)
            reading_status = reading.status
        record: dict[str, object] = {
            "path": name,
            "digits": reading.text if reading else "",
            "confidences": [round(p.confidence, 4) for p in reading.predictions] if reading else [],
            "sources": [p.source for p in reading.predictions] if reading else [],
        }
        if reading_status != "ok":
            record["error"] = reading_status
            failures += 1
        if args.json:
            print(json.dumps(record), flush=True)
        elif reading is not None and reading_status == "ok":
            shown = ", ".join(f"{p.digit} ({p.confidence:.0%} {p.source})" for p in reading.predictions)
            print(f"{name}: {record['digits']}   [{shown}]")
        else:
            print(f"{name}: no digits read ({reading_status})")
        if args.explain:
            _explain(args, index, name, reading)
    return 1 if failures == len(args.images) else 0


def explain_path(explain: str, index: int, count: int) -> Path:
    """Where `predict --explain OUT.png` writes the figure of image `index` (0-based) of `count`:
    OUT.png for one image, OUT-1.png, OUT-2.png, ... (in argument order) for several."""
    out = Path(explain)
    return out if count == 1 else out.with_name(f"{out.stem}-{index + 1}{out.suffix or '.png'}")


def _explain(args: argparse.Namespace, index: int, name: str, reading: PhotoReading | None) -> None:
    """Write the --explain figure of one image and say where; no figure when nothing was decoded.

    With --json the notes go to stderr, so stdout stays one JSON object per line."""
    stream = sys.stderr if args.json else sys.stdout
    pre = reading.preprocessed if reading is not None else None
    if reading is None or pre is None or pre.gray is None:
        why = "the file could not be read" if reading is None else f"not an image we can decode: {reading.status}"
        print(f"{name}: no explanation figure ({why})", file=stream, flush=True)
        return
    from core.vision.explain import explain_figure

    out = explain_figure(pre, [p.probabilities for p in reading.predictions],
                         explain_path(args.explain, index, len(args.images)))
    print(f"{name}: explanation figure written to {out}", file=stream, flush=True)


def _cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from digitbot.settings import get_settings
    from digitbot.wiring import open_database, use_data_paths, worker_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker").setLevel(logging.INFO)  # alembic's logging config lowers the root level
    settings = get_settings()
    use_data_paths()  # fine-tunes replay MNIST and gate on it
    if args.celery:
        if not settings.celery_broker_url:
            print("digitbot worker --celery needs DIGITBOT_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)",
                  file=sys.stderr)
            return 2
        from worker.celery_app import run_celery_worker

        run_celery_worker(worker_config(settings), concurrency=args.concurrency)
    else:
        from worker.runner import run_local_worker

        run_local_worker(worker_config(settings), session_factory=open_database(settings))
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from digitbot.settings import get_settings
    from storage.db import upgrade_to_head

    url = args.url or get_settings().resolved_database_url
    upgrade_to_head(url)
    print(f"database at {make_url(url).render_as_string(hide_password=True)} is at the latest schema")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bot.app import run
    from digitbot.settings import get_settings
    from digitbot.wiring import use_data_paths

    use_data_paths()  # the embedded worker's fine-tunes and the memory's calibration read MNIST
    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"emulator_port": args.port})
    run(settings, with_worker=not args.no_worker)
    return 0


def _base_weights(args: argparse.Namespace) -> Path:
    """--base, else the settings' base model (DIGITBOT_BASE_WEIGHTS, default the shipped one)."""
    from digitbot.settings import get_settings

    return Path(args.base) if args.base else get_settings().base_weights


def _cmd_finetune(args: argparse.Namespace) -> int:
    from core.model.network import Checkpoint, load_base
    from core.personal.finetune import FinetuneConfig, finetune_user
    from core.personal.memory import PersonalMemory
    from core.sim.crop_writers import load_labelled_folder
    from digitbot.wiring import use_data_paths

    use_data_paths()
    images, labels, skipped = load_labelled_folder(args.data)
    for line in skipped:
        print(f"skipped {line}")
    print(f"{len(labels)} labelled images from {args.data} (digits present: "
          f"{sorted(set(labels.tolist())) or 'none'})")
    base = load_base(_base_weights(args))
    result = finetune_user(base, images, labels, config=FinetuneConfig(seed=args.seed))
    metrics = result.metrics
    # The file always carries the memory of these digits: it changes readings of look-alikes at
    # once, also when there are too few labels for a fine-tune or the gate keeps the base.
    memory = PersonalMemory(images, labels).to_dict()
    if metrics.heldout_after is None:
        print(f"no fine-tune: {result.decision.reason}")
        if not len(labels):
            return 1
        Checkpoint(state_dict={}, config=base.config, meta={"kind": "memory"}, memory=memory).save(args.out)
        print(f"wrote {args.out}: the memory of these {len(labels)} digits only "
              f"(use: digitbot predict IMAGE --user-model {args.out})")
        return 0
    print(f"held-out readings of {args.data}, cross-validated ({metrics.folds} folds: each of the "
          f"{metrics.n_holdout} images read by a model trained without it): accuracy before "
          f"{metrics.heldout_before:.1%} (base model), after {metrics.heldout_after:.1%} "
          f"(personal model with base fallback; personal alone {metrics.heldout_personal or 0:.1%})")
    print(f"MNIST test subset ({metrics.mnist_subset}): base {metrics.mnist_base_accuracy or 0:.2%}, "
          f"personal {metrics.mnist_accuracy or 0:.2%}, combined {metrics.mnist_combined_accuracy or 0:.2%}")
    print(f"gate: {result.decision.reason}")
    result.checkpoint.memory = memory
    result.checkpoint.save(args.out)
    print(f"wrote {args.out} (use: digitbot predict IMAGE --user-model {args.out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitbot", description="Handwritten digit bot")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train-base", help="train the base model on MNIST")
    train.add_argument("--data", default=None, help="MNIST folder (IDX files, gz or not)")
    train.add_argument("--out", default="core/weights/base.pt")
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--threads", type=int, default=0)
    train.add_argument("--polish-epochs", type=int, default=4, help="low-LR, mild-augmentation second stage")
    train.add_argument("--resume", default=None,
                       help="a checkpoint of an earlier stage: skip stage 1 and run the later stages asked for")
    train.add_argument("--photo-crops", default=None, nargs="+", metavar="CROPS.pt",
                       help="crops of synthetic phone photos (python -m core.sim.photo_crops; several files are "
                            "joined): adds the photo stage")
    train.add_argument("--photo-epochs", type=int, default=6, help="epochs of the photo stage (with --photo-crops)")
    train.add_argument("--photo-lr", type=float, default=2e-3, help="peak learning rate of the photo stage")
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on CPUs with BF16)")
    train.add_argument("--dry-run", action="store_true", help="one short epoch on a subset")
    train.set_defaults(func=_cmd_train_base)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    upgrade = db.add_parser("upgrade", help="apply the Alembic migrations (alembic upgrade head)")
    upgrade.add_argument("--url", default=None, help="database URL (default: DIGITBOT_DATABASE_URL or var/)")
    upgrade.set_defaults(func=_cmd_db_upgrade)

    predict = sub.add_parser("predict", help="read the digits in images")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--user-model", default=None, help="a personal checkpoint (digitbot finetune)")
    predict.add_argument("--base", default=None, help="base checkpoint (default: the shipped core/weights/base.pt)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image per line")
    predict.add_argument("--explain", default=None, metavar="OUT.png",
                         help="write an explanation figure (several images: OUT-1.png, OUT-2.png, ...)")
    predict.set_defaults(func=_cmd_predict)

    tune = sub.add_parser("finetune", help="fine-tune a personal model on a folder of labelled images")
    tune.add_argument("--data", required=True, metavar="DIR", help="DIR/0 .. DIR/9 hold images of each digit")
    tune.add_argument("--out", required=True, metavar="PATH", help="where to write the personal checkpoint")
    tune.add_argument("--base", default=None, help="base checkpoint (default: the shipped core/weights/base.pt)")
    tune.add_argument("--seed", type=int, default=0)
    tune.set_defaults(func=_cmd_finetune)

    work = sub.add_parser("worker", help="run fine-tune jobs (GPU when present, CPU otherwise)")
    work.add_argument("--celery", action="store_true", help="consume jobs from Celery (scale-out)")
    work.add_argument("--concurrency", type=int, default=1, help="Celery worker processes")
    work.set_defaults(func=_cmd_worker)

    serve = sub.add_parser("run", help="run the bot (the local Bot API emulator + web chat when no token is set)")
    serve.add_argument("--port", type=int, default=None, help="emulator port (default DIGITBOT_EMULATOR_PORT)")
    serve.add_argument("--no-worker", action="store_true", help="no embedded fine-tune sweep (extra replicas)")
    serve.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
