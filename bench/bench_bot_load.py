"""Bot under load: N simulated users send phone photos of digits through the local Bot API emulator.

The real bot runs as its own process (`digitbot run` with a token, fine-tune worker included),
pointed at an in-process emulator by DIGITBOT_TELEGRAM_BASE_URL, exactly as it would be
pointed at Telegram. Each simulated user has a private chat and loops: think (exponential, mean
--think-s; 0 = back-to-back), send a photo, wait for the bot's answer. Latency is measured inside
the emulator: from the moment the user's photo message exists to the moment the bot's answer
exists (what a Telegram user would perceive, minus the network). Baselines, measured in the same
run before the bot starts: `Recognizer.read` on the same photos, serially, in this process (the
compute floor of one answer), and an echo bot that answers each photo at once (the ceiling of
the emulator + client harness itself).

    .venv/bin/python -m bench.bench_bot_load --users 1,20,100 --think-s 5,0 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emulator import EmulatorClient, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LevelResult:
    users: int
    think_s: float
    replies: int
    errors: int
    seconds: float
    photos_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    bot_cpu_ms_per_photo: float  # CPU time of the bot process (all threads) / replies
    harness_cpu_ms_per_photo: float  # CPU time of this process (emulator + users) / replies
    load_average: float  # 1-minute load average at the end of the level (the machine is shared)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(latencies: list[float]) -> tuple[float, float, float, float]:
    if not latencies:
        return (float("nan"),) * 4
    values = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(values.max())


def make_photos(count: int, digits: tuple[int, int], seed: int) -> list[bytes]:
    from core.model.data import load_mnist
    from core.sim.photo_sim import photo_set

    images, labels = load_mnist(train=False)
    return [photo.data for photo in photo_set(images.numpy(), labels.numpy(), count, digits, seed)]


def baseline_recognizer(photos: list[bytes], weights: Path) -> tuple[float, float]:
    """p50/p95 ms of `Recognizer.read` alone (decode, preprocess, classify), serially on one core
    (torch intra-op threads = 1: on a shared 2-core machine more threads mostly wait for each
    other), on the bytes the bot downloads: the largest PhotoSize (at most 1280 px, as Telegram
    keeps photos)."""
    import torch

    from core.model.network import load_base
    from core.recognize import Recognizer
    from emulator.files import FileStore

    store = FileStore()
    largest = []
    for data in photos:
        sizes = store.add_photo(data)
        assert sizes is not None
        largest.append(store.by_id[sizes[-1]["file_id"]].data)
    torch.set_num_threads(1)
    recognizer = Recognizer(load_base(weights))
    recognizer.read(largest[0])
    times = []
    for data in largest * 3:  # three passes: the machine is shared, more samples steady the figure
        started = time.perf_counter()
        recognizer.read(data)
        times.append(time.perf_counter() - started)
    p50, p95, _, _ = percentiles(times)
    return p50, p95


class LocalUsers:
    """Users acting on the emulator's state directly (same process and event loop): the same
    updates reach the bot over the Bot API, but the harness spends no CPU on HTTP and multipart
    parsing, leaving the 2 cores to the bot. `--transport http` uses EmulatorClient instead."""

    def __init__(self, server: EmulatorServer) -> None:
        self.state = server.state

    async def set_user(self, user_id: int, *, language_code: str) -> None:
        self.state.upsert_user(user_id, language_code=language_code)

    async def send_photo(self, user_id: int, chat_id: int, data: bytes) -> int:
        sizes = self.state.files.add_photo(data)
        return int(self.state.user_message(user_id, chat_id, {"photo": sizes})["message_id"])

    async def wait_for_bot_message(self, chat_id: int, *, after: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        bot_id = self.state.bot_user["id"]
        while True:
            for message in reversed(self.state.chats[chat_id].messages.values()):
                if message["message_id"] <= after:
                    break
                if message["from"]["id"] == bot_id:
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer in chat {chat_id}")
            await self.state.wait_changed(remaining)


async def echo_bot(server: EmulatorServer) -> None:
    """The harness ceiling: a bot that answers each photo at once, without downloading it."""
    import telegram

    async with telegram.Bot(server.token, base_url=server.bot_api_url) as bot:
        offset = 0
        while True:
            updates = await bot.get_updates(offset=offset, timeout=10)
            if updates:
                offset = updates[-1].update_id + 1
            await asyncio.gather(*(update.message.reply_text("ok", do_quote=True)
                                   for update in updates if update.message))


def start_bot(server: EmulatorServer, weights: Path, data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIGITBOT_TELEGRAM_TOKEN": server.token,
           "DIGITBOT_TELEGRAM_BASE_URL": server.bot_api_url,
           "DIGITBOT_TELEGRAM_BASE_FILE_URL": server.file_api_url,
           "DIGITBOT_DATA_DIR": str(data_dir), "DIGITBOT_BASE_WEIGHTS": str(weights),
           "DIGITBOT_DATABASE_URL": f"sqlite:///{data_dir / 'bench.db'}"}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "digitbot.cli", "run"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def wait_until_ready(server: EmulatorServer, users: Any, bot: subprocess.Popen[bytes],
                           photo: bytes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.state.poll_generation == 0:
        if bot.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the bot did not start polling")
        await asyncio.sleep(0.2)
    for _ in range(3):  # warm-up: thread pools, first torch call, SQLite file
        sent = await users.send_photo(1, 1, photo)
        await users.wait_for_bot_message(1, after=sent, timeout=60)


async def run_level(server: EmulatorServer, users: Any, photos: list[bytes], n_users: int,
                    think_s: float, duration: float, first_user_id: int, seed: int,
                    bot_pid: int | None = None) -> LevelResult:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    created = server.state.created_at

    async def user(user_id: int) -> None:
        nonlocal errors
        rng = random.Random(seed * 100_003 + user_id)
        await users.set_user(user_id, language_code=rng.choice(["en", "zh-hans"]))
        await asyncio.sleep(rng.uniform(0, think_s))  # users don't all start in the same instant
        while time.monotonic() < stop_at:
            try:
                sent = await users.send_photo(user_id, user_id, rng.choice(photos))
                reply = await users.wait_for_bot_message(user_id, after=sent, timeout=60)
                latencies.append(created[(user_id, reply["message_id"])] - created[(user_id, sent)])
            except (TimeoutError, RuntimeError, OSError):
                errors += 1
            if think_s:
                await asyncio.sleep(min(rng.expovariate(1 / think_s), max(0.0, stop_at - time.monotonic())))

    started, harness_cpu = time.monotonic(), time.process_time()
    bot_cpu = process_cpu_s(bot_pid) if bot_pid else float("nan")
    await asyncio.gather(*(user(first_user_id + i) for i in range(n_users)))
    seconds = time.monotonic() - started
    replies = max(1, len(latencies))
    bot_cpu = (process_cpu_s(bot_pid) if bot_pid else float("nan")) - bot_cpu
    harness_cpu = time.process_time() - harness_cpu
    p50, p95, p99, worst = percentiles(latencies)
    return LevelResult(n_users, think_s, len(latencies), errors, round(seconds, 1),
                       round(len(latencies) / seconds, 2), round(p50, 1), round(p95, 1), round(p99, 1),
                       round(worst, 1), round(1000 * bot_cpu / replies, 1), round(1000 * harness_cpu / replies, 1),
                       round(os.getloadavg()[0], 1))


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    digits = tuple(int(x) for x in args.digits.split("-"))
    print(f"generating {args.pool} phone photos ({args.digits} digits each)…", flush=True)
    photos = make_photos(args.pool, (digits[0], digits[-1]), args.seed)
    baseline_p50, baseline_p95 = baseline_recognizer(photos, args.weights)
    print(f"baseline Recognizer.read: p50 {baseline_p50:.1f} ms, p95 {baseline_p95:.1f} ms", flush=True)
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-bot-") as tmp:
        async with EmulatorServer(port=0) as server, EmulatorClient(server.base_url) as client:
            users = client if args.transport == "http" else LocalUsers(server)
            for data in photos:  # Telegram's photo sizes are made once per distinct photo
                server.state.files.add_photo(data)
            echo = asyncio.create_task(echo_bot(server))
            ceiling = await run_level(server, users, photos, args.echo_users, 0.0, args.duration / 2, 500,
                                      args.seed)
            echo.cancel()
            print(f"harness ceiling (echo bot, {args.echo_users} users back-to-back): "
                  f"{json.dumps(asdict(ceiling))}", flush=True)
            bot = start_bot(server, args.weights, Path(tmp), Path(tmp) / "bot.log")
            try:
                await wait_until_ready(server, users, bot, photos[0])
                next_user = 1000
                for think_s in args.think_s:
                    for n_users in args.users:
                        result = await run_level(server, users, photos, n_users, think_s, args.duration,
                                                 next_user, args.seed, bot_pid=bot.pid)
                        next_user += n_users
                        results.append(result)
                        print(json.dumps(asdict(result)), flush=True)
            except BaseException:
                print((Path(tmp) / "bot.log").read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
            finally:
                bot.terminate()
                try:
                    bot.wait(20)
                except subprocess.TimeoutExpired:
                    bot.kill()
    return {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", "transport": args.transport,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "weights": str(args.weights),
            "baseline_recognizer_ms": {"p50": round(baseline_p50, 1), "p95": round(baseline_p95, 1)},
            "harness_ceiling_echo_bot": asdict(ceiling),
            "levels": [asdict(result) for result in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,20,100", help="concurrent users per level, comma-separated")
    parser.add_argument("--think-s", default="5,0",
                        help="mean think time between a user's photos, comma-separated (0 = back-to-back)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    parser.add_argument("--pool", type=int, default=48, help="distinct photos to cycle through")
    parser.add_argument("--digits", default="1-4", help="digits per photo, e.g. 1 or 1-4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transport", choices=["local", "http"], default="local",
                        help="how simulated users reach the emulator (see LocalUsers)")
    parser.add_argument("--echo-users", type=int, default=20, help="users for the echo-bot ceiling")
    default_weights = ROOT / "weights" / "base.pt"
    parser.add_argument("--weights", type=Path,
                        default=default_weights if default_weights.exists() else ROOT / "runs" / "dev_base.pt")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.users = [int(n) for n in args.users.split(",")]
    args.think_s = [float(t) for t in args.think_s.split(",")]
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
