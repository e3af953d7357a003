"""Health and metrics endpoints for operators: ``/healthz``, ``/readyz`` and ``/metrics``.

A small aiohttp server of its own (python-telegram-bot's webhook server is tornado-based and has no
public way to add routes), on ``DIGITBOT_HEALTH_LISTEN:DIGITBOT_HEALTH_PORT`` in both polling and
webhook mode (loopback by default; 0 turns it off).

- ``/healthz``: 200 while the process serves requests.
- ``/readyz``: 200 when the database answers and the base model is loaded, else 503 with the reason.
- ``/metrics``: Prometheus text format. Counters and the latency histogram are updated where the
  events happen (:class:`MeteredServices`, the bot's services); the inbox and fine-tune job gauges
  are counted in the database at scrape time. No prometheus call lives in core/ or storage/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.services import BotServices, Notices, PhotoOutcome
from storage.repository.inbox import inbox_pending_count
from storage.repository.service import service_counts

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry()  # this module's metrics only (no default process collectors)
READY_TIMEOUT_S = 5.0
JOB_STATES = ("queued", "running", "succeeded", "failed")

PHOTOS_READ = Counter("digitbot_photos_read", "Photos read, by outcome status (ok, no_digits, duplicate, "
                      "quota, error, ...)", ["status"], registry=REGISTRY)
READING_SECONDS = Histogram("digitbot_reading_seconds", "Time to read one photo (recognition and storage)",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                            registry=REGISTRY)
PROMOTIONS = Counter("digitbot_promotions", "Personal models promoted (announced by this process)",
                     registry=REGISTRY)


class MeteredNotices(Notices):
    """Fine-tune outcomes, counting the promotions this process announces."""

    def tell(self, telegram_id: int, summary: dict[str, Any]) -> None:
        if summary.get("promoted", True):  # kept-your-model outcomes are told through here too
            PROMOTIONS.inc()
        super().tell(telegram_id, summary)


class MeteredServices(BotServices):
    """The bot's services, counting photos read (with their latency)."""

    async def read_photo(self, *, update_id: int, telegram_id: int, chat_id: int,
                         file_id: str, file_unique_id: str, data: bytes) -> PhotoOutcome:
        started = time.perf_counter()
        status = "error"
        try:
            outcome = await super().read_photo(update_id=update_id, telegram_id=telegram_id, chat_id=chat_id,
                                               file_id=file_id, file_unique_id=file_unique_id, data=data)
            status = outcome.status
            return outcome
        finally:
            READING_SECONDS.observe(time.perf_counter() - started)
            PHOTOS_READ.labels(status=status).inc()


def count_pending_updates(services: BotServices) -> int:
    """Updates in the durable inbox not yet handled (all replicas)."""
    with services.sessions() as session:
        return inbox_pending_count(session)


class DatabaseGauges(Collector):
    """Counted in the database at each scrape: inbox pending, fine-tune jobs by state, and the
    fine-tune outcomes (finished jobs, succeeded or failed: a counter that only drops when a user's
    data is forgotten, which Prometheus reads as a counter reset)."""

    def __init__(self, services: BotServices) -> None:
        self.services = services

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time (the database may be down at registration)

    def collect(self) -> Iterator[Metric]:
        try:
            with self.services.sessions() as session:
                counts = service_counts(session)
            pending = count_pending_updates(self.services)
        except Exception as error:  # the scrape still gets the in-process metrics
            log.warning("metrics: database counts unavailable (%s)", error.__class__.__name__)
            up = GaugeMetricFamily("digitbot_database_up", "Whether the last scrape's database counts worked")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("digitbot_database_up", "Whether the last scrape's database counts worked")
        up.add_metric([], 1)
        yield up
        inbox = GaugeMetricFamily("digitbot_inbox_pending", "Updates in the inbox not yet handled")
        inbox.add_metric([], pending)
        yield inbox
        jobs = GaugeMetricFamily("digitbot_finetune_jobs", "Fine-tune jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(f"jobs_{state}", 0))
        yield jobs
        outcomes = CounterMetricFamily("digitbot_finetune_outcomes", "Finished fine-tune jobs by outcome",
                                       labels=["outcome"])
        for state in ("succeeded", "failed"):
            outcomes.add_metric([state], counts.get(f"jobs_{state}", 0))
        yield outcomes


def _database_reachable(services: BotServices) -> None:
    with services.sessions() as session:
        session.connection()  # opens (and checks out) a connection: raises when unreachable


async def readiness(services: BotServices) -> str | None:
    """None when ready, else why not."""
    if getattr(services.recognizer, "model", None) is None:
        return "model not loaded"
    try:
        await asyncio.wait_for(asyncio.to_thread(_database_reachable, services), READY_TIMEOUT_S)
    except TimeoutError:
        return f"database did not answer within {READY_TIMEOUT_S:g} s"
    except Exception as error:
        return f"database unreachable ({error.__class__.__name__})"
    return None


def health_app(services: BotServices) -> web.Application:
    registry = CollectorRegistry()
    registry.register(_Forward(REGISTRY))
    registry.register(DatabaseGauges(services))

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        reason = await readiness(services)
        if reason is not None:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    async def metrics(_request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class _Forward(Collector):
    """Another registry's metrics, inside this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(self.source.collect())


class HealthServer:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_health_server(services: BotServices, *, host: str, port: int) -> HealthServer:
    """Serve the three endpoints on host:port (0: any free port; see ``HealthServer.port``)."""
    runner = web.AppRunner(health_app(services), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    return HealthServer(runner, int(addresses[0][1]) if addresses else port)
