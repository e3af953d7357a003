"""Local Bot API emulator: a Telegram-compatible HTTP server, a web chat page and a client API."""

from emulator.client import EmulatorClient
from emulator.server import DEFAULT_TOKEN, EmulatorServer

__all__ = ["DEFAULT_TOKEN", "EmulatorClient", "EmulatorServer"]
