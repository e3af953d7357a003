"""Preprocessing benchmark: our core.vision.preprocess against the seed's pipeline, same photos, same run.

Photos are rendered by core.sim.photo_sim from MNIST *test* digits (single digits, and rows of 2-8),
both pipelines feed the same base model, and a photo counts as read only when the whole string
is right. Latency is per photo (decode + preprocessing + classification) with one thread for
OpenCV and torch; throughput is digits/s for the whole set with preprocessing spread over two
worker processes and classification batched on two threads.

    python -m bench.bench_preprocess --singles 600 --rows 600 [--failures DIR] [--style thin]

`--style thin` renders the digits with real pen widths (core.sim.pen_sim) instead of upscaled MNIST strokes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.seed_pipeline import seed_preprocess
from core.model.data import load_mnist
from core.model.network import for_inference, load_base, normalize
from core.recognize import Recognizer
from core.sim.photo_sim import STYLES, Photo, photo_set

_RECOGNIZER: list[Recognizer] = []


def ours(data: bytes) -> list[np.ndarray]:
    """The crops of the reading the bot would give: every look, the classifier's choice (that
    choice classifies the crops once more than the seed's pipeline does; counted in the latency)."""
    if not _RECOGNIZER:
        _RECOGNIZER.append(Recognizer(load_base()))
    return [crop.image for crop in _RECOGNIZER[0].read(data).crops]


PIPELINES: dict[str, Callable[[bytes], list[np.ndarray]]] = {"ours": ours, "seed": seed_preprocess}


def classify(model: torch.nn.Module, crops: list[np.ndarray]) -> str:
    if not crops:
        return ""
    with torch.inference_mode():
        logits = model(normalize(torch.from_numpy(np.stack(crops))).contiguous(memory_format=torch.channels_last))
    return "".join(str(int(d)) for d in logits.argmax(1))


def _single_thread() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _run_all(pipeline: str, datas: list[bytes]) -> list[list[np.ndarray]]:
    _single_thread()
    return [PIPELINES[pipeline](d) for d in datas]


def measure(name: str, model: torch.nn.Module, photos: list[Photo]) -> dict[str, object]:
    """Per-photo accuracy and single-core latency for one pipeline."""
    _single_thread()
    run = PIPELINES[name]
    latencies, pre_latencies, cpu, readings = [], [], [], []
    for photo in photos:
        cpu_start = time.process_time()
        start = time.perf_counter()
        crops = run(photo.data)
        middle = time.perf_counter()
        readings.append(classify(model, crops))
        end = time.perf_counter()
        cpu.append(time.process_time() - cpu_start)
        latencies.append(end - start)
        pre_latencies.append(middle - start)
    return {"readings": readings, "latency": np.array(latencies) * 1000, "pre": np.array(pre_latencies) * 1000,
            "cpu": np.array(cpu) * 1000}


def throughput(name: str, model: torch.nn.Module, photos: list[Photo]) -> float:
    """Digits per second on two cores: preprocessing in two processes, classification batched."""
    datas = [p.data for p in photos]
    halves = [datas[0::2], datas[1::2]]
    torch.set_num_threads(2)
    start = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        crops = [c for part in pool.map(_run_all, [name, name], halves) for crops in part for c in crops]
    with torch.inference_mode():
        for i in range(0, len(crops), 512):
            model(normalize(torch.from_numpy(np.stack(crops[i: i + 512]))))
    elapsed = time.perf_counter() - start
    return len(crops) / elapsed


def _accuracy(photos: list[Photo], readings: list[str]) -> float:
    return sum(p.text == r for p, r in zip(photos, readings, strict=True)) / max(1, len(photos))


def _breakdown(photos: list[Photo], readings: list[str]) -> str:
    total: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    for photo, reading in zip(photos, readings, strict=True):
        keys = [f"ink={photo.traits['ink']}", f"paper={photo.traits['paper']}",
                f"shadow={photo.traits['shadow']}", f"desk={photo.traits['desk']}",
                f"count={'ok' if len(reading) == len(photo.labels) else 'wrong'}"]
        for key in keys:
            total[key] += 1
            wrong[key] += photo.text != reading
    return ", ".join(f"{k}: {wrong[k]}/{total[k]} wrong" for k in sorted(total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=600)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--failures", type=Path, default=None, help="write misread photos (ours) here")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--style", choices=list(STYLES), default="classic", help="photo style (core.sim.photo_sim)")
    args = parser.parse_args()

    images, labels = load_mnist(train=False)
    start = time.perf_counter()
    singles = photo_set(images.numpy(), labels.numpy(), args.singles, (1, 1), args.seed, args.style)
    rows = photo_set(images.numpy(), labels.numpy(), args.rows, (2, 8), args.seed + 1, args.style)
    print(f"rendered {len(singles)} single-digit and {len(rows)} row photos ({args.style} style) "
          f"in {time.perf_counter() - start:.0f}s")
    ckpt = load_base()
    model = for_inference(ckpt.build())  # as core.recognize serves it (BN folded, channels-last)
    weights = os.environ.get("DIGITBOT_BASE_WEIGHTS", "core/weights/base.pt")
    print(f"model: {weights} (MNIST test accuracy {ckpt.metrics.get('mnist_test_accuracy', 'n/a')})")
    print(f"load average before the run: {os.getloadavg()[0]:.1f}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")

    print("| pipeline | single digits | whole rows (2-8) | p50 ms/photo | p95 ms/photo | "
          "p50 / p95 CPU ms/photo | p50 ms preprocessing only | digits/s on 2 cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    details = {}
    for name in PIPELINES:
        single = measure(name, model, singles)
        row = measure(name, model, rows)
        latency = np.concatenate([single["latency"], row["latency"]])  # type: ignore[list-item]
        pre = np.concatenate([single["pre"], row["pre"]])  # type: ignore[list-item]
        cpu = np.concatenate([single["cpu"], row["cpu"]])  # type: ignore[list-item]
        rate = 0.0 if args.no_throughput else throughput(name, model, singles + rows)
        print(f"| {name} | {_accuracy(singles, single['readings']):.1%} "  # type: ignore[arg-type]
              f"| {_accuracy(rows, row['readings']):.1%} "  # type: ignore[arg-type]
              f"| {np.percentile(latency, 50):.1f} | {np.percentile(latency, 95):.1f} "
              f"| {np.percentile(cpu, 50):.1f} / {np.percentile(cpu, 95):.1f} "
              f"| {np.percentile(pre, 50):.1f} | {rate:.0f} |", flush=True)
        details[name] = (single["readings"], row["readings"])

    ours_single, ours_rows = details["ours"]
    print("\nours, single digits:", _breakdown(singles, ours_single))  # type: ignore[arg-type]
    print("ours, rows:", _breakdown(rows, ours_rows))  # type: ignore[arg-type]
    by_length: dict[int, list[bool]] = defaultdict(list)
    for photo, reading in zip(rows, ours_rows, strict=True):  # type: ignore[call-overload]
        by_length[len(photo.labels)].append(photo.text == reading)
    print("ours, rows by length:", ", ".join(f"{n}: {np.mean(v):.1%}" for n, v in sorted(by_length.items())))
    if args.failures:
        args.failures.mkdir(parents=True, exist_ok=True)
        for i, (photo, reading) in enumerate(zip(singles + rows, list(ours_single) + list(ours_rows),  # type: ignore[call-overload]
                                                 strict=True)):
            if photo.text != reading:
                suffix = "png" if photo.traits["format"] == "png" else "jpg"
                (args.failures / f"{i:04d}_{photo.text}_read_{reading or 'none'}.{suffix}").write_bytes(photo.data)


if __name__ == "__main__":
    main()
