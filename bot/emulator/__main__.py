"""Run the emulator alone: `python -m bot.emulator [--host 127.0.0.1] [--port 8080] [--token T]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bot.emulator.server import DEFAULT_TOKEN, EmulatorServer


async def serve(host: str, port: int, token: str) -> None:
    async with EmulatorServer(host=host, port=port, token=token) as server:
        print(f"Bot API emulator: web chat {server.page_url}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_TOKEN={token}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_BASE_URL={server.bot_api_url}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_BASE_FILE_URL={server.file_api_url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bot.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.token))


if __name__ == "__main__":
    main()
