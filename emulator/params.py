"""Bot API method parameters (query, JSON, form or multipart) and the method registry."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from emulator.state import BotApiError, EmulatorState, bad_request

# Telegram ids are 64-bit signed; anything bigger (or nan, inf, 1e400) is a client bug or an attack.
INT_LIMIT = 2**63 - 1
_INTEGER = re.compile(r"^\s*[+-]?[0-9]{1,19}\s*$", re.ASCII)


def parse_int(value: Any, name: str, *, minimum: int = -INT_LIMIT, maximum: int = INT_LIMIT) -> int:
    """An integer parameter as Telegram reads it ("42", 42 or 42.0), within [minimum, maximum]; anything
    else (nan, inf, 1.5, true, out of range) is a 400 Bad Request, never a hang or a 500."""
    if isinstance(value, bool):
        raise bad_request(f"invalid {name} specified")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise bad_request(f"invalid {name} specified")
        value = int(value)
    if isinstance(value, str):
        if not _INTEGER.match(value):
            raise bad_request(f"invalid {name} specified")
        value = int(value)
    if not isinstance(value, int):
        raise bad_request(f"invalid {name} specified")
    if not minimum <= value <= maximum:
        raise bad_request(f"{name} must be between {minimum} and {maximum}")
    return value


def parse_seconds(value: Any, name: str, *, maximum: float) -> float:
    """A duration in seconds (query strings give text): finite, 0 <= value <= maximum, else 400."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise bad_request(f"invalid {name} specified") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= maximum:
        raise bad_request(f"{name} must be between 0 and {maximum:g} seconds")
    return seconds


@dataclass
class Upload:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


class Params:
    """Method parameters from a query string, a JSON body, a form or a multipart body.

    Form values arrive as strings (python-telegram-bot JSON-encodes objects into them), so the
    accessors convert on demand.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def get(self, name: str) -> Any:
        return self.raw.get(name)

    def json(self, name: str) -> Any:
        value = self.raw.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise bad_request(f"can't parse {name} JSON object") from None
        return value

    def int(self, name: str, default: int | None = None, *, minimum: int = -INT_LIMIT,
            maximum: int = INT_LIMIT) -> int | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        return parse_int(value, name, minimum=minimum, maximum=maximum)

    def bool(self, name: str) -> bool:
        value = self.raw.get(name)
        return value is True or str(value).lower() in ("true", "1")

    def required(self, name: str) -> Any:
        value = self.raw.get(name)
        if value is None or value == "":
            raise bad_request(f"{name} is empty")
        return value


Method = Callable[[EmulatorState, Params], Awaitable[Any]]
METHODS: dict[str, Method] = {}


def method(*names: str) -> Callable[[Method], Method]:
    def register(function: Method) -> Method:
        for name in names:
            METHODS[name.lower()] = function
        return function
    return register


async def call_method(state: EmulatorState, name: str, params: Params) -> Any:
    function = METHODS.get(name.lower())
    if function is None:
        raise BotApiError(404, "Not Found")
    return await function(state, params)
