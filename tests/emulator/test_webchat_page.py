"""The web chat without a browser: what its page sends reaches the bot as Telegram would deliver it,
and the page's own words exist in every language its menu offers (the browser tests drive it for real)."""
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser

import aiohttp

from emulator.server import STATIC_DIR
from tests.emulator.support import harness

API = "/emulator/api"


async def _post_file(base_url: str, chat_id: int, png: bytes, **fields: str) -> tuple[int, dict[str, object]]:
    """POST the multipart form chat.js's sendFile() builds."""
    form = aiohttp.FormData()
    for name, value in {"user_id": "42", "as_document": "false", **fields}.items():
        form.add_field(name, value)
    form.add_field("file", png, filename="photo.png", content_type="image/png")
    async with aiohttp.ClientSession(headers={"Origin": base_url}) as session, \
            session.post(f"{base_url}{API}/chats/{chat_id}/file", data=form) as response:
        return response.status, await response.json()


def test_the_caption_field_goes_with_the_photo(png: bytes) -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.set_user(42, first_name="Ann")
            status, _ = await _post_file(h.server.base_url, 42, png, caption="4271")
            assert status == 200
            status, _ = await _post_file(h.server.base_url, 42, png, caption="   ")  # blank: no caption
            assert status == 200
            status, refused = await _post_file(h.server.base_url, 42, png, caption="7" * 1025)
            assert status == 400 and "caption is too long" in str(refused["description"])
            captioned, blank = await h.bot.get_updates(timeout=1)
            assert captioned.message.photo and captioned.message.caption == "4271"
            assert blank.message.photo and blank.message.caption is None

    asyncio.run(scenario())


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()
        self.ids: list[str] = []
        self.panel_of: dict[str, int] = {}
        self.panels = 0
        self.menu: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "panel" in (values.get("class") or "").split():
            self.panels += 1
        for name in ("data-i18n", "data-i18n-placeholder", "data-i18n-title"):
            if values.get(name):
                self.keys.add(str(values[name]))
        if values.get("id"):
            self.ids.append(str(values["id"]))
            self.panel_of[str(values["id"])] = self.panels
        if tag == "option" and self.ids and self.ids[-1] == "user-lang":
            self.menu.append(str(values["value"]))


def _ui_text() -> dict[str, set[str]]:
    script = (STATIC_DIR / "chat.js").read_text()
    block = script[script.index("const UI_TEXT = {"):script.index("\n};", script.index("const UI_TEXT = {"))]
    languages = re.split(r"\n  (\w+): \{", block)[1:]
    return {name: set(re.findall(r"(\w+): \"", body)) for name, body in zip(languages[::2], languages[1::2],
                                                                              strict=True)}


def test_the_page_has_its_words_in_english_and_chinese_and_a_caption_next_to_the_upload() -> None:
    page = _Page()
    page.feed((STATIC_DIR / "chat.html").read_text())
    assert page.panel_of["caption"] == page.panel_of["file"]  # the caption field sits with the photo upload
    assert {"lightbox", "lightbox-image"} <= set(page.ids)  # a tapped image opens full size
    words = _ui_text()
    assert set(words) == {"en", "zh"}
    assert words["en"] == words["zh"], words["en"] ^ words["zh"]
    script = (STATIC_DIR / "chat.js").read_text()
    used_in_script = set(re.findall(r"\bt\(\"(\w+)\"\)", script)) | set(re.findall(r"setStatus\(\"(\w+)\"\)", script))
    missing = (page.keys | used_in_script) - words["en"]
    assert not missing, missing
    assert {"en", "zh-hans"} <= set(page.menu)  # the menu offers the bot's languages (/lang follows into it)
