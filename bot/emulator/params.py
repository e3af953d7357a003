"""Bot API method parameters (query, JSON, form or multipart) and the method registry."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.emulator.state import BotApiError, EmulatorState, bad_request


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

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise bad_request(f"invalid {name} specified") from None

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
