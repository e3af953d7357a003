"""gettext catalogues for the bot's replies (English msgids, translations in ``<lang>/LC_MESSAGES``).

Source catalogues are ``bot/i18n/<lang>/LC_MESSAGES/digitbot.po``; the compiled ``.mo`` files next to
them are committed and rebuilt with ``python -m bot.i18n.compile`` (Babel) after editing a ``.po``.
"""

from __future__ import annotations

import gettext
from functools import cache
from pathlib import Path
from typing import Any

DOMAIN = "digitbot"
LOCALE_DIR = Path(__file__).resolve().parent
DEFAULT_LANGUAGE = "en"
# Language code -> the name shown on the /lang buttons (each in its own language, so not translated).
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh_CN": "中文"}
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_NAMES)


def resolve_language(code: str | None) -> str:
    """Map a Telegram ``language_code`` (IETF tag such as ``zh-hans`` or ``en-US``) to a catalogue."""
    if not code:
        return DEFAULT_LANGUAGE
    normalized = code.strip().replace("_", "-").lower()
    if normalized in {lang.lower().replace("_", "-") for lang in SUPPORTED_LANGUAGES}:
        return next(lang for lang in SUPPORTED_LANGUAGES if lang.lower().replace("_", "-") == normalized)
    # Any Chinese variant reads Simplified Chinese better than English.
    if normalized.split("-")[0] == "zh":
        return "zh_CN"
    return DEFAULT_LANGUAGE


class Translator:
    """``_("Hello {name}", name=...)``: the translated message, formatted with the keyword arguments."""

    def __init__(self, language: str) -> None:
        self.language = language if language in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE
        self._catalogue = _catalogue(self.language)

    def __call__(self, message: str, /, **values: Any) -> str:
        text = self._catalogue.gettext(message)
        return text.format(**values) if values else text

    def __repr__(self) -> str:
        return f"Translator({self.language!r})"


@cache
def _catalogue(language: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)


@cache
def translator(language: str | None) -> Translator:
    return Translator(language or DEFAULT_LANGUAGE)

