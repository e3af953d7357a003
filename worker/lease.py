"""A running fine-tune's liveness: its training steps (`Progress`), and the lease its heartbeat
renews while they happen (`Heartbeat`). A worker that stops stepping stops renewing, so the sweep
re-queues its jobs (storage/repository/jobs.py); a run given up on stops at its next step."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from storage.db import SessionFactory
from storage.records import Claim
from storage.repository import jobs as job_repo

log = logging.getLogger(__name__)


class JobAbandoned(RuntimeError):
    """Raised at the next training step of a job the watchdog or the heartbeat gave up on."""


class Progress:
    """A running fine-tune's step counter, shared by its training loop, its heartbeat and the
    embedded worker's watchdog. Every optimiser step of the thread the job runs in ticks it (a
    process-wide torch hook, see `bound`), so core/ needs no worker code; `run_jobs` also ticks it
    between phases. Once abandoned, the next tick raises `JobAbandoned`."""

    def __init__(self) -> None:
        self.steps = 0
        self.claims: list[Claim] = []
        self.reason = ""
        self._last_tick = time.monotonic()
        self._abandoned = threading.Event()

    def tick(self) -> None:
        if self._abandoned.is_set():
            raise JobAbandoned(self.reason)
        self.steps += 1
        self._last_tick = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last step."""
        return time.monotonic() - self._last_tick

    def abandon(self, reason: str) -> None:
        if not self._abandoned.is_set():
            self.reason = reason
            self._abandoned.set()

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    @contextmanager
    def bound(self) -> Iterator[Progress]:
        """Optimiser steps taken by this thread meanwhile tick this progress."""
        _install_step_hook()
        previous = getattr(_bound, "progress", None)
        _bound.progress = self
        try:
            yield self
        finally:
            _bound.progress = previous


_bound = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def _install_step_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_on_optimizer_step)
        _hook_installed = True


def _on_optimizer_step(*_: Any) -> None:
    progress: Progress | None = getattr(_bound, "progress", None)
    if progress is not None:
        progress.tick()


class Heartbeat:
    """Renews the leases of the claimed jobs every `interval_s` while they run; a job whose lease
    was taken away (the sweep thought this worker dead and re-queued it) goes into `lost`.
    With `progress`, it renews only while training moves: after `stall_s` without a step it
    stops renewing (the lease expires and the sweep re-queues the jobs) and abandons them."""

    def __init__(self, session_factory: SessionFactory, claims: Sequence[Claim], *, interval_s: float,
                 progress: Progress | None = None, stall_s: float | None = None) -> None:
        self._factory = session_factory
        self._claims = list(claims)
        self._interval_s = interval_s
        self._progress = progress
        self._stall_s = stall_s
        self._stop = threading.Event()
        self.lost: set[int] = set()
        self.stalled = False
        self._thread = threading.Thread(target=self._loop, name="finetune-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._stalled():
                continue
            held = [c for c in self._claims if c.job_id not in self.lost]
            try:
                with self._factory.begin() as session:
                    gone = [c.job_id for c in held
                            if not job_repo.renew_lease(session, job_id=c.job_id, attempt=c.attempt)]
            except SQLAlchemyError as exc:  # the database blinked: try again at the next beat
                log.warning("fine-tune heartbeat failed: %s", exc.__class__.__name__)
                continue
            for job_id in gone:
                log.warning("job %s: lease lost, this worker will not write its result", job_id)
            self.lost.update(gone)

    def _stalled(self) -> bool:
        if self.stalled or self._progress is None or self._stall_s is None:
            return self.stalled
        if self._progress.idle_s() <= self._stall_s:
            return False
        self.stalled = True
        reason = f"no training progress for {self._stall_s:g} s"
        log.error("jobs %s: %s; the lease is no longer renewed", [c.job_id for c in self._claims], reason)
        self._progress.abandon(reason)
        return True
