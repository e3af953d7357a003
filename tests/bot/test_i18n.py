from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from bot.i18n import LOCALE_DIR, SUPPORTED_LANGUAGES, resolve_language, translator

BOT_DIR = LOCALE_DIR.parent
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _source_messages() -> set[str]:
    found = extract_from_dir(str(BOT_DIR), keywords={"_": None, "N_": None},
                             directory_filter=lambda path: "emulator" not in Path(path).parts)
    return {message if isinstance(message, str) else message[0] for _, _, message, *_ in found}


def _po(language: str):  # type: ignore[no-untyped-def]
    with open(LOCALE_DIR / language / "LC_MESSAGES" / "digitbot.po", "rb") as handle:
        return read_po(handle)


def _literal_messages() -> set[str]:
    """Every string literal passed first to _() or N_() anywhere in bot/ (nested calls included)."""
    found = set()
    for path in BOT_DIR.rglob("*.py"):
        if "emulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"_", "N_"}
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.add(node.args[0].value)
    return found


def test_every_message_in_the_code_is_in_each_catalogue() -> None:
    messages = _source_messages()
    assert len(messages) > 50
    assert _literal_messages() <= messages, "a message Babel cannot extract (e.g. a _() inside a _() call)"
    for language in SUPPORTED_LANGUAGES:
        catalogue_ids = {m.id for m in _po(language) if m.id}
        assert messages <= catalogue_ids, f"{language}: run python -m bot.i18n.build"


def test_every_message_has_a_chinese_translation_with_the_same_placeholders() -> None:
    for message in _po("zh_CN"):
        if not message.id:
            continue
        assert message.string, f"untranslated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
        assert set(PLACEHOLDER.findall(message.id)) == set(PLACEHOLDER.findall(message.string)), message.id


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
def test_compiled_catalogue_matches_its_source(language: str) -> None:
    with open(LOCALE_DIR / language / "LC_MESSAGES" / "digitbot.mo", "rb") as handle:
        compiled = {m.id: m.string for m in read_mo(handle) if m.id}
    source = {m.id: m.string for m in _po(language) if m.id and m.string}
    assert compiled == source, "stale .mo: run python -m bot.i18n.build --compile"


def test_handler_modules_show_no_literal_text_outside_gettext() -> None:
    """Every string literal passed to reply/answer/edit calls in the handlers goes through _()."""
    for path in (BOT_DIR / "handlers").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {
                "reply_text", "answer", "edit_text", "send_message", "reply_photo", "edit_message"
            }:
                for arg in node.args:
                    assert not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)), (
                        f"{path.name}:{node.lineno}: literal text in {node.func.attr}()")


def test_translator_formats_and_falls_back() -> None:
    zh, en = translator("zh_CN"), translator("en")
    assert zh("Recorded: {digits}", digits="4271") == "已记录：4271"
    assert en("Recorded: {digits}", digits="4271") == "Recorded: 4271"
    assert translator("fr").language == "en"
    assert translator("zh_CN")("a message nobody translated") == "a message nobody translated"


@pytest.mark.parametrize(("code", "language"), [
    (None, "en"), ("", "en"), ("en", "en"), ("en-US", "en"), ("de", "en"), ("zh", "zh_CN"),
    ("zh-hans", "zh_CN"), ("zh-CN", "zh_CN"), ("zh_CN", "zh_CN"), ("zh-hant", "zh_CN"), ("ZH-HANS", "zh_CN"),
])
def test_telegram_language_codes(code: str | None, language: str) -> None:
    assert resolve_language(code) == language
