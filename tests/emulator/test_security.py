"""The emulator runs next to the user's browser: no web page may drive it (issue 13, item 6).

Host header (DNS rebinding), Origin on every POST (CSRF), cross-site fetches, a random token per run,
webhooks to loopback only, files as downloads, numbers validated (never a hang), loopback bind.
"""
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
import telegram

from digitbot.settings import Settings
from emulator import DEFAULT_TOKEN, EmulatorServer
from emulator.__main__ import build_parser
from emulator.server import host_allowed
from tests.emulator.support import digit_png, harness

EVIL = "https://evil.example"


def test_only_loopback_host_headers_are_served() -> None:
    async def scenario() -> None:
        async with harness() as h:
            port, session = h.server.port, h.users.session
            paths = ["/", "/emulator/api/info", f"/bot{h.server.token}/getMe"]
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
                for path in paths:
                    async with session.get(h.server.base_url + path, headers={"Host": host}) as response:
                        assert response.status == 200, (host, path)
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                         f"localhost.evil.example:{port}", f"192.168.1.5:{port}", "user@127.0.0.1"):
                for path in paths:
                    async with session.get(h.server.base_url + path, headers={"Host": host}) as response:
                        assert response.status == 403, (host, path)
                        assert "Host" in (await response.json())["description"]

    asyncio.run(scenario())


def test_host_check_beyond_loopback_accepts_ip_literals_only() -> None:
    assert host_allowed("10.0.0.5:8080", allow_remote=True) and host_allowed("[fe80::1]:80", allow_remote=True)
    assert not host_allowed("10.0.0.5:8080")
    assert not host_allowed("evil.example:8080", allow_remote=True)


def test_a_foreign_origin_cannot_post_to_the_bot_api() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_text(5, 5, "hello")
            url, session = f"{h.server.bot_api_url}{h.server.token}/sendMessage", h.users.session
            body = {"chat_id": 5, "text": "from a web page"}
            for origin in (EVIL, "null", f"http://127.0.0.1:{h.server.port + 1}"):
                async with session.post(url, json=body, headers={"Origin": origin}) as response:
                    assert response.status == 403, origin
                    assert (await response.json())["description"] == "Forbidden: cross-origin request"
            async with session.post(url, data=body, headers={"Origin": EVIL}) as response:  # a plain <form>
                assert response.status == 403
            assert [m["text"] for m in await h.users.messages(5)] == ["hello"]
            async with session.post(url, json=body, headers={"Origin": h.server.base_url}) as response:
                assert response.status == 200
            await h.bot.send_message(5, "from the bot")  # no Origin: a non-browser client
            assert [m["text"] for m in await h.users.messages(5)] == ["hello", "from a web page", "from the bot"]

    asyncio.run(scenario())


def test_cross_site_fetches_of_the_apis_are_refused() -> None:
    async def scenario() -> None:
        async with harness() as h:
            session = h.users.session
            for path in ("/emulator/api/info", f"/bot{h.server.token}/getMe", "/emulator/api/chats/1/messages"):
                async with session.get(h.server.base_url + path, headers={"Sec-Fetch-Site": "cross-site"}) as response:
                    assert response.status == 403, path
                async with session.get(h.server.base_url + path, headers={"Sec-Fetch-Site": "same-origin"}) as response:
                    assert response.status == 200, path
                    assert response.headers["X-Content-Type-Options"] == "nosniff"

    asyncio.run(scenario())


def test_a_random_token_per_run() -> None:
    first, second = EmulatorServer(token=None), EmulatorServer(token=None)
    assert first.token != second.token and DEFAULT_TOKEN not in (first.token, second.token)
    assert re.fullmatch(r"\d{5,}:[A-Za-z0-9_-]{35}", first.token), "shaped like Telegram's (log redaction)"
    assert first.state.token == first.token
    assert build_parser().parse_args([]).token is None, "python -m emulator: random unless --token"


def test_digitbot_run_starts_the_emulator_with_a_random_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import emulator
    from bot.app import serve

    seen: dict[str, Any] = {}

    class Recorder(EmulatorServer):
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)
            super().__init__(**kwargs)
            seen["token_used"] = self.token

        async def start(self) -> EmulatorServer:
            raise OSError(98, "stop here")

    monkeypatch.setattr(emulator, "EmulatorServer", Recorder)
    settings = Settings(telegram_token=None, emulator_port=0, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(SystemExit):
        asyncio.run(serve(settings, with_worker=False))
    assert seen["token"] is None and seen["token_used"] != DEFAULT_TOKEN
    assert seen["allow_remote"] is False


def test_webhooks_only_to_loopback() -> None:
    async def scenario() -> None:
        async with harness() as h:
            for url in ("https://example.com/hook", "http://192.168.1.5:8443/", "http://127.0.0.1.evil.example/",
                        "http://127.0.0.1@evil.example/", "http://[fe80::1]/", "http://0.0.0.0:8443/"):
                with pytest.raises(telegram.error.BadRequest, match="loopback"):
                    await h.bot.set_webhook(url)
                assert (await h.bot.get_webhook_info()).url == ""
            for url in ("http://127.0.0.1:8443/hook", "http://localhost:8443/", "http://[::1]:8443/"):
                assert await h.bot.set_webhook(url)
                assert (await h.bot.get_webhook_info()).url == url
            await h.bot.delete_webhook()

    asyncio.run(scenario())


def test_files_are_downloads_never_pages() -> None:
    async def scenario() -> None:
        async with harness() as h:
            page = b"<html><script>fetch('/emulator/api/reset', {method: 'POST'})</script></html>"
            await h.users.send_photo(3, 3, page, as_document=True, file_name="page.html")
            (update,) = await h.bot.get_updates()
            document = update.message.document
            assert document.mime_type == "text/html"
            file = await h.bot.get_file(document.file_id)
            urls = [str(file.file_path), f"{h.server.base_url}/emulator/api/files/{document.file_id}"]
            chart = await h.bot.send_photo(3, digit_png("3", (60, 40)))
            urls.append(f"{h.server.base_url}/emulator/api/files/{chart.photo[-1].file_id}")
            for url in urls:
                async with h.users.session.get(url) as response:
                    assert response.status == 200, url
                    assert response.headers["Content-Disposition"].startswith("attachment"), url
                    assert response.headers["X-Content-Type-Options"] == "nosniff", url
                    assert "sandbox" in response.headers["Content-Security-Policy"], url

    asyncio.run(scenario())


async def _status(session: Any, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with asyncio.timeout(5):  # a hang fails the test instead of stalling it
        async with session.request(method, url, **kwargs) as response:
            return response.status, await response.json()


def test_numbers_are_validated_never_a_hang() -> None:
    async def scenario() -> None:
        async with harness() as h:
            session, base = h.users.session, f"{h.server.bot_api_url}{h.server.token}"
            await h.users.send_text(5, 5, "hello")
            messages = f"{h.server.base_url}/emulator/api/chats/5/messages"
            for timeout in ("nan", "inf", "-inf", "-1", "1e9", "1e400", "x"):
                status, body = await _status(session, "GET", messages, params={"since": "99", "timeout": timeout})
                assert (status, body["ok"], body["error_code"]) == (400, False, 400), timeout
            for since in ("nan", "1e400", "9" * 40):
                status, _ = await _status(session, "GET", messages, params={"since": since, "timeout": "0"})
                assert status == 400, since
            for params in ({"timeout": "nan"}, {"timeout": "inf"}, {"timeout": "-1"}, {"timeout": "100000000"},
                           {"timeout": "1e400"}, {"timeout": "9" * 40}, {"limit": "-1"}, {"limit": "1000"},
                           {"offset": "nan"}):
                status, body = await _status(session, "GET", f"{base}/getUpdates", params=params)
                assert status == 400 and body["description"].startswith("Bad Request"), params
            for raw in ('{"timeout": Infinity}', '{"timeout": NaN}', '{"timeout": 1e400}', '{"limit": true}'):
                status, _ = await _status(session, "POST", f"{base}/getUpdates", data=raw,
                                          headers={"Content-Type": "application/json"})
                assert status == 400, raw
            for raw in ('{"chat_id": Infinity, "text": "x"}', '{"chat_id": 5, "text": "x", "reply_to_message_id": NaN}',
                        '{"chat_id": 5, "text": "x", "reply_parameters": {"message_id": 1e400}}'):
                status, _ = await _status(session, "POST", f"{base}/sendMessage", data=raw,
                                          headers={"Content-Type": "application/json"})
                assert status == 400, raw
            for raw in ('{"id": Infinity}', '{"id": 1.5}', '{"id": "1e400"}'):
                status, _ = await _status(session, "POST", f"{h.server.base_url}/emulator/api/users", data=raw,
                                          headers={"Content-Type": "application/json"})
                assert status == 400, raw
            status, body = await _status(session, "GET", f"{base}/getUpdates", params={"timeout": "0", "limit": "0"})
            assert status == 200 and len(body["result"]) == 1

    asyncio.run(scenario())


def test_listening_beyond_loopback_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    for host in ("0.0.0.0", "", "::", "192.168.1.5"):
        with pytest.raises(ValueError, match="loopback"):
            EmulatorServer(host=host)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        EmulatorServer(host=host)
    with caplog.at_level(logging.WARNING, logger="emulator.server"):
        EmulatorServer(host="0.0.0.0", allow_remote=True)
    assert "beyond loopback" in caplog.text

    settings = Settings(telegram_token=None, emulator_host="0.0.0.0", emulator_port=0,
                        _env_file=None)  # type: ignore[call-arg]
    from bot.app import serve
    with pytest.raises(SystemExit, match="DIGITBOT_EMULATOR_ALLOW_REMOTE"):
        asyncio.run(serve(settings, with_worker=False))
