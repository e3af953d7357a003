"""Reliability under load: N simulated users x M photos each, every answer labelled (confirm button,
digit button or a text reply), through the local Bot API emulator while the fine-tune worker trains;
then the same run with the worker SIGKILLed twice and the bot SIGKILLed once (both restarted).

The bot (`digitbot run --no-worker`) and the worker (`digitbot worker`) are separate processes on one
SQLite database, so either can be killed; the emulator and the users live in this process (users act
on the emulator's state directly, as bench.bench_bot_load's LocalUsers do, so the harness spends no
CPU on HTTP). A user whose photo or label gets no answer in --answer-timeout-s does what a person
would: sends it again. At the end the database is compared with what the users sent:

* labels lost: readings whose stored current labels differ from the labels the user gave (a tap
  answered with an alert, e.g. "This button doesn't work any more", is not taken as recorded: the
  user taps again, and the alerts are counted in refused_taps);
* labels duplicated: label rows beyond one per labelled digit (a retried tap must not add a row);
* photos: answered, unanswered (resent), readings stored without an answer attached (orphans).

Reply latency (photo -> answer) is measured inside the emulator, label latency (tap/reply -> answer)
in the simulated client.

    .venv/bin/python -m bench.bench_reliability_load --users 200 --photos 20 --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulator import EmulatorServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tally:
    photos_sent: int = 0
    photos_answered: int = 0
    photos_resent: int = 0
    problem_answers: Counter[str] = field(default_factory=Counter)
    labels_sent: int = 0  # digits labelled
    label_retries: int = 0
    photo_latency: list[float] = field(default_factory=list)
    label_latency: list[float] = field(default_factory=list)
    expected: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (user, reading) -> labels
    progress: int = 0


class Users:
    """Users acting on the emulator's state; answers are matched by a hook on the state's messages."""

    def __init__(self, server: EmulatorServer) -> None:
        self.state = server.state
        self._waiters: dict[tuple[int, int], asyncio.Future[dict[str, Any]]] = {}
        self._next: dict[int, list[tuple[int, str, asyncio.Future[dict[str, Any]]]]] = {}
        self.late_answers = 0
        self.refused_taps: list[str] = []  # alerts the bot answered a label tap with
        original = self.state.add_message
        bot_id = self.state.bot_user["id"]

        def add_message(chat: Any, sender: dict[str, Any], content: dict[str, Any], **kwargs: Any) -> Any:
            message = original(chat, sender, content, **kwargs)
            replied = message.get("reply_to_message")
            if sender["id"] == bot_id and replied is not None:
                waiter = self._waiters.pop((chat.id, replied["message_id"]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
                elif waiter is not None:  # the user gave up waiting and sent the photo again
                    self.late_answers += 1
            if sender["id"] == bot_id:  # "Recorded: 4271" after a text correction acknowledges it
                pending = self._next.get(chat.id, [])
                for entry in list(pending):
                    after, text, future = entry
                    if message["message_id"] > after and text in message.get("text", ""):
                        pending.remove(entry)
                        if not future.done():
                            future.set_result(message)
            return message
        self.state.add_message = add_message  # type: ignore[method-assign]

    def send(self, user: int, content: dict[str, Any], reply_to: int | None = None
             ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        message = self.state.user_message(user, user, content, reply_to=reply_to)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[(user, message["message_id"])] = waiter
        return int(message["message_id"]), waiter

    def send_text(self, user: int, text: str, reply_to: int) -> asyncio.Future[dict[str, Any]]:
        """A text reply; the future is the bot's next message that repeats the digits (it need not quote)."""
        message = self.state.user_message(user, user, {"text": text}, reply_to=reply_to)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._next.setdefault(user, []).append((int(message["message_id"]), text, waiter))
        return waiter

    async def answer(self, user: int, message_id: int, data: str, timeout: float) -> bool:
        """True when the bot took the tap: answered, and not with an alert ("This button doesn't work
        any more", "try again": the label was not recorded; counted in `refused_taps`)."""
        query = self.state.press_button(user, user, message_id, data)
        deadline = time.monotonic() + timeout
        while not query.answered:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        if (query.answer or {}).get("show_alert"):
            self.refused_taps.append(str((query.answer or {}).get("text", ""))[:60])
            return False
        return True


def _digits_shown(reply: dict[str, Any], count: int) -> list[int]:
    confirm = reply["reply_markup"]["inline_keyboard"][0][0]["text"]
    found = re.search(rf"\d{{{count}}}", confirm)
    assert found is not None, confirm
    return [int(c) for c in found.group()]


async def simulate_user(users: Users, tally: Tally, user: int, photos: list[Any], count: int, args: Any,
                        created: dict[tuple[int, int], float]) -> None:
    rng = random.Random(user)
    users.state.upsert_user(user, language_code=rng.choice(["en", "en", "zh-hans"]))
    await asyncio.sleep(rng.uniform(0, args.think_s))
    for index in range(count):
        photo = rng.choice(photos)
        reply = None
        for attempt in range(args.retries):
            sent, waiter = users.send(user, {"photo": users.state.files.add_photo(photo.data)})
            tally.photos_sent += 1
            try:
                reply = await asyncio.wait_for(waiter, args.answer_timeout_s)
            except TimeoutError:
                tally.photos_resent += attempt + 1 < args.retries
                continue
            tally.photos_answered += 1
            tally.photo_latency.append(created[(user, reply["message_id"])] - created[(user, sent)])
            break
        tally.progress += 1
        if reply is None or "reply_markup" not in reply:
            tally.problem_answers["unanswered" if reply is None else reply["text"][:40]] += 1
            continue
        keyboard = [b["callback_data"] for row in reply["reply_markup"]["inline_keyboard"] for b in row]
        reading = int(keyboard[0].split(":")[1])
        single = len(keyboard) > 1 and keyboard[1].startswith("d:")
        count_digits = 1 if single else sum(d.startswith("p:") for d in keyboard)
        truth = photo.labels if len(photo.labels) == count_digits else None
        action = index % 3
        started = time.perf_counter()
        if action == 0 or truth is None:
            labels, acked = _digits_shown(reply, count_digits), False
            for _ in range(args.retries):
                acked = await users.answer(user, reply["message_id"], keyboard[0], args.answer_timeout_s)
                if acked:
                    break
                tally.label_retries += 1
        elif action == 1 and single:
            labels, acked = truth, False
            for _ in range(args.retries):
                acked = await users.answer(user, reply["message_id"], f"d:{reading}:0:{truth[0]}",
                                           args.answer_timeout_s)
                if acked:
                    break
                tally.label_retries += 1
        else:
            labels, acked = truth, False
            for _ in range(args.retries):
                waiter = users.send_text(user, "".join(map(str, truth)), reply["message_id"])
                try:
                    await asyncio.wait_for(waiter, args.answer_timeout_s)
                    acked = True
                    break
                except TimeoutError:
                    tally.label_retries += 1
        if acked:
            tally.label_latency.append(time.perf_counter() - started)
        tally.labels_sent += len(labels)
        tally.expected[(user, reading)] = labels
        await asyncio.sleep(rng.expovariate(1 / args.think_s) if args.think_s else 0)


class Process:
    """A restartable `digitbot` child process with its own log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "digitbot.cli", *self.argv], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def faults(tally: Tally, total: int, bot: Process, worker: Process, events: list[str],
                 server: EmulatorServer) -> None:
    """Kill the worker at 25% and 65% of the photos, the bot at 45%; restart each at once."""
    plan = [(0.25, worker), (0.45, bot), (0.65, worker)]
    for fraction, process in plan:
        while tally.progress < fraction * total:
            await asyncio.sleep(0.1)
        process.kill()
        events.append(f"{time.strftime('%H:%M:%S')} SIGKILL {process.name} at {tally.progress}/{total} photos")
        generation = server.state.poll_generation
        process.start()
        if process is bot:
            while server.state.poll_generation == generation:  # polling again
                await asyncio.sleep(0.1)
            events.append(f"{time.strftime('%H:%M:%S')} bot polling again")


def verify(db_url: str, tally: Tally) -> dict[str, Any]:
    from storage import repository as repo
    from storage.db import session_factory
    from storage.repository.service import service_counts

    sessions = session_factory(db_url)
    lost = []
    with sessions() as session:
        for (user, reading), labels in tally.expected.items():
            view = repo.get_reading(session, telegram_id=user, reading_id=reading)
            stored = [d.label for d in view.digits] if view is not None else None
            if stored != labels:
                lost.append({"user": user, "reading": reading, "sent": labels, "stored": stored})
        counts = service_counts(session)
        from sqlalchemy import func, select

        from storage.models import FinetuneJob, Reading
        orphans = session.scalar(select(func.count()).select_from(Reading).where(Reading.bot_message_id.is_(None)))
        outcomes = dict(session.execute(select(FinetuneJob.outcome, func.count()).group_by(FinetuneJob.outcome)).all())
    sessions.kw["bind"].dispose()
    return {"labels_sent": tally.labels_sent, "labels_stored": counts["labels"], "label_rows": counts["label_rows"],
            "labels_lost": len(lost), "labels_duplicated": counts["label_rows"] - counts["labels"],
            "lost_examples": lost[:5], "readings_stored": counts["readings"], "orphan_readings": int(orphans or 0),
            "jobs": {k: v for k, v in counts.items() if k.startswith("jobs_")},
            "job_outcomes": {str(k): int(v) for k, v in outcomes.items()}, "active_models": counts["active_models"]}


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1),
            "max": round(max(values) * 1000, 1)}


async def scenario(name: str, args: Any, photos: list[Any], with_faults: bool, workdir: Path) -> dict[str, Any]:
    from storage.db import upgrade_to_head

    db_url = f"sqlite:///{workdir / f'{name}.db'}"
    upgrade_to_head(db_url)
    tally, events = Tally(), list[str]()
    async with EmulatorServer(port=0) as server:
        env = {**os.environ, "DIGITBOT_TELEGRAM_TOKEN": server.token, "DIGITBOT_TELEGRAM_BASE_URL": server.bot_api_url,
               "DIGITBOT_TELEGRAM_BASE_FILE_URL": server.file_api_url, "DIGITBOT_DATABASE_URL": db_url,
               "DIGITBOT_DATA_DIR": str(workdir), "DIGITBOT_BASE_WEIGHTS": str(args.weights),
               "DIGITBOT_FINETUNE_INTERVAL_S": str(args.finetune_interval_s),
               "DIGITBOT_FINETUNE_MIN_LABELS": str(args.finetune_min_labels),
               "DIGITBOT_FINETUNE_LEASE_S": str(args.lease_s), "PYTHONUNBUFFERED": "1"}
        bot = Process(f"{name}-bot", ["run", "--no-worker"], env, workdir)
        worker = Process(f"{name}-worker", ["worker"], {**env, "OMP_NUM_THREADS": "1"}, workdir)
        users = Users(server)
        bot.start()
        worker.start()
        try:
            while server.state.poll_generation == 0:
                await asyncio.sleep(0.2)
            total = args.users * args.photos
            started = time.monotonic()
            fault_task = asyncio.create_task(faults(tally, total, bot, worker, events, server)) if with_faults \
                else None
            await asyncio.gather(*(simulate_user(users, tally, 10_000 + u, photos, args.photos, args,
                                                 server.state.created_at) for u in range(args.users)))
            seconds = time.monotonic() - started
            if fault_task is not None:
                if not fault_task.done():
                    events.append("not every planned fault happened before the users finished")
                fault_task.cancel()
        finally:
            bot.stop()
            worker.stop()
    (workdir / f"{name}-expected.json").write_text(json.dumps(  # what the users sent, for a post-mortem
        [[user, reading, labels] for (user, reading), labels in tally.expected.items()]))
    checked = None
    for attempt in range(3):  # a working tree being edited by others can fail an import for a moment
        try:
            checked = verify(db_url, tally)
            break
        except ImportError:
            if attempt == 2:
                raise
            await asyncio.sleep(30)
    report = {"scenario": name, "users": args.users, "photos_per_user": args.photos, "seconds": round(seconds, 1),
              "photos_sent": tally.photos_sent, "photos_answered": tally.photos_answered,
              "photos_resent": tally.photos_resent, "late_answers": users.late_answers,
              "problem_answers": dict(tally.problem_answers), "refused_taps": dict(Counter(users.refused_taps)),
              "label_retries": tally.label_retries, "reply_latency_ms": _ms(tally.photo_latency),
              "label_latency_ms": _ms(tally.label_latency), "events": events, **(checked or {})}
    print(json.dumps(report), flush=True)
    return report


def _telegram_size(photo: Any, max_side: int) -> Any:
    """Telegram's standard photo compression: a JPEG with the long side at most `max_side`."""
    import cv2

    image = cv2.imdecode(np.frombuffer(photo.data, np.uint8), cv2.IMREAD_COLOR)  # EXIF orientation applied
    assert image is not None
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    photo.data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 87])[1].tobytes()
    return photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--photos", type=int, default=20, help="photos per user")
    parser.add_argument("--think-s", type=float, default=2.0, help="mean pause between a user's actions")
    parser.add_argument("--answer-timeout-s", type=float, default=90.0, help="then the user sends it again")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--pool", type=int, default=120, help="distinct photos")
    parser.add_argument("--max-side", type=int, default=1280, help="photos as Telegram compresses them")
    parser.add_argument("--finetune-interval-s", type=float, default=10.0)
    parser.add_argument("--finetune-min-labels", type=int, default=10)
    parser.add_argument("--lease-s", type=float, default=20.0, help="fine-tune job lease (dead worker detection)")
    parser.add_argument("--scenarios", default="steady,faults", help="steady, faults, or both")
    from digitbot.settings import SHIPPED_BASE_WEIGHTS

    parser.add_argument("--weights", type=Path, default=SHIPPED_BASE_WEIGHTS, help="base model (the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-logs", type=Path, help="copy the bot's and the worker's logs here (and the "
                        "scenario's database when a label was lost or duplicated)")
    args = parser.parse_args()

    from core.model.data import load_mnist
    from core.sim.photo_sim import photo_set

    images, labels = load_mnist(train=False)
    photos = [_telegram_size(photo, args.max_side) for photo in
              photo_set(images.numpy(), labels.numpy(), args.pool, (1, 3), args.seed)]
    reports = []
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        try:
            for name in args.scenarios.split(","):
                reports.append(asyncio.run(scenario(name, args, photos, name == "faults", Path(tmp))))
        finally:
            if args.keep_logs is not None:  # the bot's and the worker's logs, for a post-mortem
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).glob("*.log"):
                    shutil.copy(log, args.keep_logs / log.name)
                (args.keep_logs / "reports.json").write_text(json.dumps(reports, indent=2))
                checked = {r["scenario"]: r for r in reports}
                for name in args.scenarios.split(","):  # the database too, when something is to be explained
                    report = checked.get(name)
                    if (report is None or report["labels_lost"] or report["labels_duplicated"]) \
                            and (Path(tmp) / f"{name}.db").exists():
                        for kept in (f"{name}.db", f"{name}-expected.json"):
                            if (Path(tmp) / kept).exists():
                                shutil.copy(Path(tmp) / kept, args.keep_logs)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", "weights": str(args.weights),
              "command": " ".join([".venv/bin/python -m bench.bench_reliability_load", *sys.argv[1:]]),
              "scenarios": reports}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
