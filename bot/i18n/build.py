"""Refresh the gettext catalogues with Babel: extract the messages from bot/ into digitbot.pot,
merge them into every ``<lang>/LC_MESSAGES/digitbot.po`` and compile the ``.mo`` files.

    python -m bot.i18n.build            # extract + update + compile (after changing messages)
    python -m bot.i18n.build --compile  # only compile (after editing translations)
"""

from __future__ import annotations

import argparse
import sys

from babel.messages.frontend import CommandLineInterface

from bot.i18n import DOMAIN, LOCALE_DIR

BOT_DIR = LOCALE_DIR.parent
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"


def _pybabel(*args: str) -> None:
    CommandLineInterface().run(["pybabel", "-q", *args])


def extract() -> None:
    _pybabel("extract", "-k", "_", "-k", "N_", "--no-location", "--omit-header", "--sort-output",
             "--ignore-dirs=emulator", "-o", str(TEMPLATE), str(BOT_DIR))


def update() -> None:
    _pybabel("update", "-D", DOMAIN, "-i", str(TEMPLATE), "-d", str(LOCALE_DIR), "--no-fuzzy-matching",
             "--ignore-obsolete", "--width=100")


def compile_catalogues() -> None:
    _pybabel("compile", "-D", DOMAIN, "-d", str(LOCALE_DIR), "--statistics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="only compile the .po files")
    args = parser.parse_args(argv)
    if not args.compile:
        extract()
        update()
    compile_catalogues()
    return 0


if __name__ == "__main__":
    sys.exit(main())
