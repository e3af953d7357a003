"""/healthz, /readyz and /metrics (bot/health.py) on a real server on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from bot.health import REGISTRY, MeteredNotices, MeteredServices, start_health_server
from core.recognize import Recognizer
from storage.db import session_factory
from tests.bot.support import digits_photo, migrated_sessions


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _get(base: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(base + path) as response:
        return response.status, await response.text()


def test_the_three_endpoints(tmp_path: Path, recognizer: Recognizer) -> None:
    services = MeteredServices(sessions=migrated_sessions(tmp_path), recognizer=recognizer)

    async def scenario() -> None:
        before = REGISTRY.get_sample_value("digitbot_photos_read_total", {"status": "ok"}) or 0.0
        outcome = await services.read_photo(update_id=1, telegram_id=7, chat_id=7, file_id="f", file_unique_id="u",
                                            data=digits_photo("42"))
        assert outcome.status == "ok"
        server = await start_health_server(services, host="127.0.0.1", port=_free_port())
        base = f"http://127.0.0.1:{server.port}"
        try:
            assert await _get(base, "/healthz") == (200, "ok\n")
            assert await _get(base, "/readyz") == (200, "ready\n")
            status, text = await _get(base, "/metrics")
        finally:
            await server.stop()
        assert status == 200
        assert f'digitbot_photos_read_total{{status="ok"}} {before + 1:.1f}' in text
        assert "digitbot_reading_seconds_count" in text
        assert "digitbot_inbox_pending 0.0" in text
        for state in ("queued", "running", "succeeded", "failed"):
            assert f'digitbot_finetune_jobs{{state="{state}"}} 0.0' in text
        assert 'digitbot_finetune_outcomes_total{outcome="succeeded"} 0.0' in text
        assert "digitbot_promotions_total" in text
        assert "digitbot_database_up 1.0" in text

    try:
        asyncio.run(scenario())
    finally:
        services.close()


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path, recognizer: Recognizer) -> None:
    # a PostgreSQL URL on a loopback port where nothing listens
    unreachable = session_factory(f"postgresql+psycopg://digitbot:x@127.0.0.1:{_free_port()}/digitbot")
    services = MeteredServices(sessions=unreachable, recognizer=recognizer)

    async def scenario() -> None:
        server = await start_health_server(services, host="127.0.0.1", port=_free_port())
        base = f"http://127.0.0.1:{server.port}"
        try:
            assert await _get(base, "/healthz") == (200, "ok\n")
            status, text = await _get(base, "/readyz")
            assert status == 503 and text.startswith("not ready: database unreachable"), text
            status, text = await _get(base, "/metrics")  # still served, with the in-process metrics
            assert status == 200 and "digitbot_database_up 0.0" in text and "digitbot_photos_read" in text
        finally:
            await server.stop()

    try:
        asyncio.run(scenario())
    finally:
        services.close()


def test_only_promotions_count_as_promotions(tmp_path: Path, recognizer: Recognizer) -> None:
    services = MeteredServices(sessions=migrated_sessions(tmp_path), recognizer=recognizer, notices=MeteredNotices())
    told: list[bool] = []
    services.notices.connect(lambda _user, summary: told.append(bool(summary["promoted"])))
    before = REGISTRY.get_sample_value("digitbot_promotions_total") or 0.0
    services.notices.tell(1, {"promoted": False})
    services.notices.tell(1, {"promoted": True})
    assert told == [False, True]  # both outcomes are told
    assert REGISTRY.get_sample_value("digitbot_promotions_total") == before + 1
