"""Bot API methods about the bot itself: getMe, updates (long polling, webhook), commands."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from urllib.parse import urlsplit

from emulator.params import Params, method
from emulator.state import JSON, BotApiError, EmulatorState, bad_request

_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_WEBHOOK_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# A long poll held longer than any client asks for (python-telegram-bot: 10 s, digitbot: 25 s) is refused
# with 400 rather than parking a request for hours (or forever: ?timeout=nan, inf, 1e300).
MAX_POLL_TIMEOUT_S = 60


def _loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@method("getMe")
async def get_me(state: EmulatorState, p: Params) -> JSON:
    return {**state.bot_user, "can_read_all_group_messages": not state.group_privacy}


@method("logOut", "close")
async def log_out(state: EmulatorState, p: Params) -> bool:
    return True


@method("deleteWebhook")
async def delete_webhook(state: EmulatorState, p: Params) -> bool:
    state.webhook_url, state.webhook_secret = "", ""
    if p.bool("drop_pending_updates"):
        state.updates.clear()
    state.notify()
    return True


@method("setWebhook")
async def set_webhook(state: EmulatorState, p: Params) -> bool:
    """Webhook mode (see emulator.webhook); plain http is allowed since the emulator is local, and
    only loopback URLs are."""
    url = str(p.get("url") or "")
    if not url:
        return await delete_webhook(state, p)
    if not _WEBHOOK_URL.match(url):
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    if not _loopback_url(url):
        # Else any caller could make the emulator POST chat contents to any host on the network.
        raise bad_request("bad webhook: the local emulator delivers webhooks only to loopback addresses "
                          "(127.0.0.1, localhost, [::1])")
    secret = str(p.get("secret_token") or "")
    if secret and not _SECRET_TOKEN.match(secret):
        raise bad_request("secret token contains unallowed characters")
    allowed = p.json("allowed_updates")
    if isinstance(allowed, list):
        state.allowed_updates = frozenset(map(str, allowed)) or None
    if p.bool("drop_pending_updates"):
        state.updates.clear()
    state.webhook_url, state.webhook_secret, state.webhook_last_error = url, secret, None
    state.poll_generation += 1  # a long poll still waiting ends with 409 Conflict
    state.notify()
    return True


@method("getWebhookInfo")
async def get_webhook_info(state: EmulatorState, p: Params) -> JSON:
    info: JSON = {"url": state.webhook_url, "has_custom_certificate": False,
                  "pending_update_count": len(state.updates)}
    if state.webhook_url:
        info["max_connections"] = 1
        if state.allowed_updates:
            info["allowed_updates"] = sorted(state.allowed_updates)
    if state.webhook_last_error:
        info["last_error_date"], info["last_error_message"] = state.webhook_last_error
    return info


@method("getUpdates")
async def get_updates(state: EmulatorState, p: Params) -> list[JSON]:
    if state.webhook_url:
        raise BotApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                               "use deleteWebhook to delete the webhook first")
    offset = p.int("offset")
    if offset:
        state.confirm_updates(offset)
    allowed = p.json("allowed_updates")
    if isinstance(allowed, list):
        state.allowed_updates = frozenset(map(str, allowed)) or None
    limit = p.int("limit", 0, minimum=0, maximum=100) or 100
    timeout = p.int("timeout", 0, minimum=0, maximum=MAX_POLL_TIMEOUT_S) or 0
    state.poll_generation += 1
    generation = state.poll_generation
    state.notify()
    deadline = time.monotonic() + timeout
    while True:
        if generation != state.poll_generation:
            raise BotApiError(409, "Conflict: terminated by other getUpdates request; "
                                   "make sure that only one bot instance is running")
        updates = state.pending_updates(limit)
        remaining = deadline - time.monotonic()
        if updates or remaining <= 0 or state.closing:
            return updates
        await state.wait_changed(remaining)


def _commands_key(p: Params) -> tuple[str, str]:
    scope = p.json("scope") or {"type": "default"}
    return json.dumps(scope, sort_keys=True), str(p.get("language_code") or "")


@method("setMyCommands")
async def set_my_commands(state: EmulatorState, p: Params) -> bool:
    commands = p.json("commands")
    if not isinstance(commands, list) or len(commands) > 100:
        raise bad_request("commands must be an array of at most 100 BotCommand objects")
    for command in commands:
        if not isinstance(command, dict) or not _COMMAND_NAME.match(str(command.get("command", ""))):
            raise bad_request("BOT_COMMAND_INVALID")
        if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
            raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
    state.commands[_commands_key(p)] = [{"command": c["command"], "description": c["description"]}
                                        for c in commands]
    return True


@method("getMyCommands")
async def get_my_commands(state: EmulatorState, p: Params) -> list[JSON]:
    return state.commands.get(_commands_key(p), [])


@method("deleteMyCommands")
async def delete_my_commands(state: EmulatorState, p: Params) -> bool:
    state.commands.pop(_commands_key(p), None)
    return True


@method("setMyDescription", "setMyShortDescription", "setMyName", "setChatMenuButton")
async def accept_profile_setting(state: EmulatorState, p: Params) -> bool:
    return True


