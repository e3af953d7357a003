"""Run the emulator alone: `python -m emulator [--host 127.0.0.1] [--port 8080] [--token T]
[--allow-remote]`. Without --token the token is a random one, printed for the bot's settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from emulator.server import EmulatorServer


async def serve(host: str, port: int, token: str | None, allow_remote: bool = False) -> None:
    async with EmulatorServer(host=host, port=port, token=token, allow_remote=allow_remote) as server:
        print(f"Bot API emulator: web chat {server.page_url}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_TOKEN={server.token}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_BASE_URL={server.bot_api_url}", flush=True)
        print(f"  DIGITBOT_TELEGRAM_BASE_FILE_URL={server.file_api_url}", flush=True)
        await asyncio.Event().wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default=None, help="default: a random token per run")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host beyond loopback: anyone who can reach the port can use it")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.host, args.port, args.token, args.allow_remote))
    except ValueError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
