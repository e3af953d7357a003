"""The one place that wires everything: settings -> storage, recognizer, services, the
python-telegram-bot Application, the local Bot API emulator (no token) and the fine-tune worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from typing import Any

from pydantic import SecretStr
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, Defaults

from bot.handlers import register
from bot.handlers.admin import register_admin
from bot.handlers.commands import register_commands
from bot.handlers.common import SERVICES_KEY
from bot.handlers.errors import install_redaction
from bot.handlers.stats import promotion_notifier
from bot.health import HealthServer, MeteredNotices, MeteredServices, start_health_server
from bot.inbox import InboxApplication, UpdateInbox
from bot.logs import configure_logging, register_log_context
from bot.services import BotServices, Notices
from bot.services.stats import FinetuneRequester
from digitbot.settings import Settings
from storage.db import SessionFactory

log = logging.getLogger(__name__)
AnyApplication = Application[Any, Any, Any, Any, Any, Any]
INBOX_KEY = "update_inbox"


def build_application(settings: Settings, *, services: BotServices) -> AnyApplication:
    """The Application for any Bot API server given by the settings' token and base URLs."""
    if settings.telegram_token is None:
        raise ValueError("no Telegram token: set DIGITBOT_TELEGRAM_TOKEN (digitbot run starts the emulator)")
    # Every update is written to the database before it can be acknowledged, and replayed at start-up
    # if its handling did not finish (bot/inbox.py).
    inbox = UpdateInbox(services, webhook=bool(settings.webhook_url))
    application = (
        ApplicationBuilder()
        .application_class(InboxApplication)
        .token(settings.telegram_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.telegram_base_file_url)
        .rate_limiter(AIORateLimiter(max_retries=3))
        # a reply whose photo was deleted meanwhile is still sent (not a "message not found" error)
        .defaults(Defaults(allow_sending_without_reply=True))
        .update_queue(inbox.queue)
        .concurrent_updates(inbox.processor)
        .post_init(_post_init)
        .build()
    )
    application.bot_data[SERVICES_KEY] = services
    application.bot_data[INBOX_KEY] = inbox
    if isinstance(application, InboxApplication):
        application.inbox = inbox
    register_log_context(application, settings.telegram_token.get_secret_value())  # update id, hashed user
    register(application)
    register_admin(application, settings.admin_ids)
    return application


async def _post_init(application: AnyApplication) -> None:
    services: BotServices = application.bot_data[SERVICES_KEY]
    services.notices.connect(promotion_notifier(application, asyncio.get_running_loop()))
    inbox: UpdateInbox | None = application.bot_data.get(INBOX_KEY)
    if inbox is not None:  # before polling or the webhook starts: the replays are queued first
        await inbox.replay(application.bot)
    try:
        await register_commands(application.bot)
    except TelegramError as error:  # a server without setMyCommands still gets a working bot
        log.warning("setMyCommands failed: %s", error)


def webhook_secret(token: str) -> str:
    """Telegram's secret_token header value, the same on every replica (derived from the token)."""
    return hashlib.sha256(f"digitbot-webhook:{token}".encode()).hexdigest()[:48]


async def start_bot(application: AnyApplication, settings: Settings) -> None:
    """Initialise and start the Application, then long polling (or the webhook when configured)."""
    await application.initialize()
    if application.post_init is not None:  # run_polling() would call it; we start the parts ourselves
        await application.post_init(application)
    await application.start()
    updater = application.updater
    assert updater is not None
    if settings.webhook_url:
        token = application.bot.token
        await updater.start_webhook(
            listen=settings.webhook_listen, port=settings.webhook_port, url_path="telegram",
            webhook_url=settings.webhook_url.rstrip("/") + "/telegram", secret_token=webhook_secret(token),
            allowed_updates=Update.ALL_TYPES)
    else:
        await updater.start_polling(allowed_updates=Update.ALL_TYPES, timeout=25)


async def stop_bot(application: AnyApplication) -> None:
    if application.updater is not None and application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()


def build_services(settings: Settings, *, sessions: SessionFactory, notices: Notices,
                   request_finetune: FinetuneRequester | None) -> BotServices:
    """The recognizer and storage behind the handlers (BotServices counting photos read for /metrics)."""
    from core.model.network import load_base
    from core.recognize import Recognizer

    return MeteredServices(
        sessions=sessions, recognizer=Recognizer(load_base(settings.base_weights), torch_threads=1),
        inference_threads=settings.inference_threads, finetune_interval_s=settings.finetune_interval_s,
        request_finetune=request_finetune, notices=notices)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None, with_worker: bool = True) -> None:
    """`digitbot run`: emulator (no token), bot, embedded fine-tune worker, until ``stop`` or a signal."""
    from digitbot.wiring import open_database, worker_config
    from emulator import EmulatorServer
    from worker.runner import embedded_worker

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    emulator = None
    if settings.telegram_token is None:
        try:
            emulator = await EmulatorServer(host=settings.emulator_host, port=settings.emulator_port, token=None,
                                            allow_remote=settings.emulator_allow_remote).start()
        except ValueError as error:  # a host beyond loopback without DIGITBOT_EMULATOR_ALLOW_REMOTE
            raise SystemExit(str(error)) from None
        except OSError as error:
            raise SystemExit(f"cannot start the local Bot API emulator on {settings.emulator_host}:"
                             f"{settings.emulator_port} ({error.strerror}); choose another port with "
                             f"--port or DIGITBOT_EMULATOR_PORT") from None
        settings = settings.model_copy(update={
            "telegram_token": SecretStr(emulator.token), "telegram_base_url": emulator.bot_api_url,
            "telegram_base_file_url": emulator.file_api_url, "webhook_url": None})
    assert settings.telegram_token is not None
    configure_logging(settings.log_format)  # text or JSON lines (DIGITBOT_LOG_FORMAT); redaction applies to both
    install_redaction(settings.telegram_token.get_secret_value())
    sessions = open_database(settings)  # migrated first when SQLite
    notices = MeteredNotices()  # fine-tune outcomes: told by the worker, sent by the bot once it runs
    worker = embedded_worker(worker_config(settings), session_factory=sessions,
                             notify=notices.tell) if with_worker else None
    services = build_services(settings, sessions=sessions, notices=notices,
                              request_finetune=worker.request_finetune if worker is not None else None)
    if emulator is not None:
        services.forget_update_markers()
    application = build_application(settings, services=services)
    health: HealthServer | None = None
    try:
        health = await _start_health(services, settings)
        await start_bot(application, settings)
        if worker is not None:  # after the bot: a promotion waiting in the outbox can be announced at once
            worker.start()
        me = application.bot.username
        if emulator is not None:
            print(f"digitbot is running against the local Bot API emulator.\n"
                  f"Web chat: {emulator.page_url}  (bot @{me}; Ctrl+C to stop)", flush=True)
        else:
            mode = f"webhook {settings.webhook_url}" if settings.webhook_url else "long polling"
            print(f"digitbot @{me} is running ({mode}); Ctrl+C to stop", flush=True)
        await stop.wait()
    finally:
        await stop_bot(application)
        if health is not None:
            await health.stop()
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        services.close()
        if emulator is not None:
            await emulator.stop()


async def _start_health(services: BotServices, settings: Settings) -> HealthServer | None:
    """/healthz, /readyz and /metrics on DIGITBOT_HEALTH_LISTEN:DIGITBOT_HEALTH_PORT (0: off). A port
    already taken is logged and the bot runs without them."""
    if not settings.health_port:
        return None
    try:
        health = await start_health_server(services, host=settings.health_listen, port=settings.health_port)
    except OSError as error:
        log.error("health/metrics endpoints not started on %s:%s (%s); set DIGITBOT_HEALTH_PORT",
                  settings.health_listen, settings.health_port, error.strerror or error)
        return None
    log.info("health and metrics on http://%s:%s/ (healthz, readyz, metrics)", settings.health_listen, health.port)
    return health


def run(settings: Settings, *, with_worker: bool = True) -> None:
    asyncio.run(serve(settings, with_worker=with_worker))
