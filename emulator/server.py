"""The emulator's aiohttp server: Bot API at /bot<TOKEN>/<method>, file downloads at
/file/bot<TOKEN>/<file_path>, the client API at /emulator/api/..., the web chat at /.

    async with EmulatorServer(port=0) as server:   # port 0: pick a free port
        bot = telegram.Bot(server.token, base_url=server.bot_api_url,
                           base_file_url=server.file_api_url)

It runs on the user's machine next to their browser, so no web page may drive it (see ``guard``): only
loopback Host headers (DNS rebinding), no foreign Origin on a POST (CSRF), no cross-site fetches of the
APIs, a random token per run (``token=None``; `digitbot run` and `python -m emulator` use one),
and it listens on loopback unless ``allow_remote=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from emulator import botapi, messages  # noqa: F401  (they register the Bot API methods)
from emulator.files import file_response
from emulator.flood import FloodControl, FloodLimits
from emulator.params import Params, Upload, call_method
from emulator.state import BotApiError, EmulatorState
from emulator.webapi import add_client_routes
from emulator.webhook import deliver_updates

DEFAULT_TOKEN = "1000001:local-emulator-token"  # fixed, for tests and benchmarks; runs use random_token()
STATIC_DIR = Path(__file__).with_name("static")
MAX_REQUEST_BYTES = 64 * 1024 * 1024
STATE_KEY = web.AppKey("emulator_state", EmulatorState)
log = logging.getLogger(__name__)


def random_token() -> str:
    """A fresh token shaped like Telegram's (so log redaction recognises it): a web page cannot guess it."""
    return f"1000001:{secrets.token_urlsafe(26)}"


def is_loopback(host: str) -> bool:
    """localhost or a loopback IP literal (127.0.0.0/8, ::1); brackets around IPv6 allowed."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@\s]+)(?::[0-9]{1,5})?$")
_GUARDED_PATHS = ("/bot", "/file/", "/emulator/")
REMOTE_KEY = web.AppKey("emulator_allow_remote", bool)


def host_allowed(host: str | None, *, allow_remote: bool = False) -> bool:
    """The Host header names this machine by loopback (or, when listening beyond loopback, by any IP
    literal): a DNS name an attacker controls that was re-pointed at 127.0.0.1 (DNS rebinding) fails."""
    if host is None:  # non-browser HTTP/1.0 clients; every browser sends Host
        return True
    match = _HOST_HEADER.match(host)
    if match is None:
        return False
    name = match.group(1)
    return is_loopback(name) or (allow_remote and _is_ip_literal(name))


def _forbidden(description: str) -> web.Response:
    return json_response({"ok": False, "error_code": 403, "description": f"Forbidden: {description}"}, 403)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Any web page open in the user's browser can send requests here; only the web chat's own page may."""
    host = request.headers.get("Host")
    if not host_allowed(host, allow_remote=request.app[REMOTE_KEY]):
        return _forbidden("the Host header must name this machine's loopback address")
    origin = request.headers.get("Origin")
    if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None \
            and origin != f"http://{host}":
        # Absent for the bot and other non-browser clients; a browser always sends it on a POST.
        return _forbidden("cross-origin request")
    if request.headers.get("Sec-Fetch-Site") == "cross-site" and request.path.startswith(_GUARDED_PATHS):
        return _forbidden("cross-site request")
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload, ensure_ascii=False), status=status,
                        content_type="application/json")


async def read_params(request: web.Request) -> Params:
    raw: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.body_exists:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise BotApiError(400, "Bad Request: can't parse JSON request body") from None
            if not isinstance(body, dict):
                raise BotApiError(400, "Bad Request: the JSON request body must be an object")
            raw.update(body)
        else:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    raw[name] = Upload(value.file.read(), value.filename, value.content_type)
                else:
                    raw[name] = value
    return Params(raw)


def _check_token(request: web.Request) -> EmulatorState:
    state = request.app[STATE_KEY]
    if request.match_info["token"] != state.token:
        raise BotApiError(401, "Unauthorized")
    return state


async def bot_api(request: web.Request) -> web.Response:
    try:
        state = _check_token(request)
        result = await call_method(state, request.match_info["method"], await read_params(request))
    except BotApiError as error:
        return json_response(error.to_json(), status=error.error_code)
    except Exception:
        log.exception("emulator: %s failed", request.match_info.get("method"))
        return json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"}, 500)
    return json_response({"ok": True, "result": result})


async def download_file(request: web.Request) -> web.StreamResponse:
    try:
        state = _check_token(request)
    except BotApiError as error:
        return json_response(error.to_json(), status=error.error_code)
    stored = state.files.by_path.get(request.match_info["file_path"])
    if stored is None:
        return json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
    return file_response(stored)


async def chat_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "chat.html")


def create_app(state: EmulatorState, *, allow_remote: bool = False) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[guard])
    app[STATE_KEY] = state
    app[REMOTE_KEY] = allow_remote
    app.router.add_route("*", "/bot{token}/{method}", bot_api)
    app.router.add_get("/file/bot{token}/{file_path:.+}", download_file)
    add_client_routes(app, state)
    app.router.add_get("/", chat_page)
    app.router.add_static("/static/", STATIC_DIR)
    return app


class EmulatorServer:
    """Start/stop the emulator inside the running event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = DEFAULT_TOKEN, *,
                 flood_limits: FloodLimits | None = None, group_privacy: bool = False,
                 allow_remote: bool = False) -> None:
        """``token=None``: a random one (``random_token()``). A ``host`` other than loopback (0.0.0.0, a
        LAN address) raises ValueError unless ``allow_remote``: then anyone who can reach the port
        can act as the bot and its users, which is logged as a warning."""
        if not is_loopback(host):
            if not allow_remote:
                raise ValueError(f"the Bot API emulator listens only on loopback (127.0.0.1, localhost, ::1), "
                                 f"not {host or 'all interfaces'}; set DIGITBOT_EMULATOR_ALLOW_REMOTE=1 "
                                 f"(python -m emulator --allow-remote) to allow it")
            log.warning("emulator: listening on %s, beyond loopback: anyone who can reach this port can act as "
                        "the bot's users, and with the token as the bot", host or "all interfaces")
        token = token or random_token()
        self.host, self.port, self.token = host, port, token
        self.state = EmulatorState(token)
        self.state.group_privacy = group_privacy
        if flood_limits is not None:
            self.state.flood = FloodControl(flood_limits)
        self.app = create_app(self.state, allow_remote=allow_remote)
        self._runner: web.AppRunner | None = None
        self._webhook_session: aiohttp.ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def bot_api_url(self) -> str:
        """For telegram.Bot(base_url=...) / DIGITBOT_TELEGRAM_BASE_URL (the token is appended)."""
        return f"{self.base_url}/bot"

    @property
    def file_api_url(self) -> str:
        """For telegram.Bot(base_file_url=...) / DIGITBOT_TELEGRAM_BASE_FILE_URL."""
        return f"{self.base_url}/file/bot"

    @property
    def page_url(self) -> str:
        return f"{self.base_url}/"

    async def start(self) -> EmulatorServer:
        self.state.closing = False
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._webhook_session = aiohttp.ClientSession()
        self._webhook_task = asyncio.create_task(deliver_updates(self.state, self._webhook_session))
        return self

    async def stop(self) -> None:
        self.state.closing = True
        self.state.notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._webhook_session is not None:
            await self._webhook_session.close()
            self._webhook_session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EmulatorServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()
