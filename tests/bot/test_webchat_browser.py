"""The web chat in a real headless Chromium (Playwright) with the real bot behind the emulator:
draw a digit, see the answer with its buttons, press a correction, see the message edited, reply
to the bot's message with the digit, ask /stats and see the chart.

Runs whenever Chromium is installed (`chromium` on PATH, or /usr/bin/chromium); DIGITBOT_TEST_CHROMIUM
names another binary. Skipped, saying why, when there is none or Playwright is missing. With
DIGITBOT_SCREENSHOT=path it also saves a screenshot of the chat there (docs/screenshots/webchat.png).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.recognize import Recognizer
from tests.bot.support import running_bot
from tests.emulator.support import harness


def find_chromium() -> str:
    """DIGITBOT_TEST_CHROMIUM when set, else the installed Chromium, else ""."""
    named = os.environ.get("DIGITBOT_TEST_CHROMIUM", "")
    if named:
        return named
    for candidate in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return ""


CHROMIUM = find_chromium()
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
NO_PLAYWRIGHT = "Playwright is not installed (pip install playwright)"
USER = 1001  # the page's default user; its private chat has the same id
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM or not Path(CHROMIUM).exists(),
                       reason=f"no Chromium binary ({CHROMIUM or 'chromium not on PATH, no /usr/bin/chromium'} "
                              "not found); install chromium or set DIGITBOT_TEST_CHROMIUM to one"),
]


async def draw_seven(page: Any) -> None:
    box = await page.locator("#pad").bounding_box()
    await page.mouse.move(box["x"] + 70, box["y"] + 55)
    await page.mouse.down()
    await page.mouse.move(box["x"] + 215, box["y"] + 55, steps=10)
    await page.mouse.move(box["x"] + 120, box["y"] + 245, steps=12)
    await page.mouse.up()


def test_draw_send_see_answer_correct_it_and_see_stats(tmp_path: Path, recognizer: Recognizer) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason=NO_PLAYWRIGHT)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h, playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1180, "height": 1060})
                page_errors: list[str] = []
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                await page.goto(h.server.page_url)
                await page.wait_for_selector("#status:text('connected')", timeout=10_000)
                await page.wait_for_selector("#command-list button:text('/stats')", timeout=10_000)

                await draw_seven(page)
                await page.click("#send-drawing")
                await page.wait_for_selector(".message.bot .keyboard button", timeout=20_000)
                drawing, answer = await h.users.messages(USER)
                sent = await h.users.download(drawing["photo"][-1]["file_id"])
                assert sent.startswith(b"\x89PNG") and len(sent) > 1000, "the canvas drawing was sent"
                assert answer["reply_to_message"]["message_id"] == drawing["message_id"]
                assert answer["text"].startswith("I read")

                # Correct it with the button "7" (its digit buttons are "d:<reading>:<position>:<digit>").
                await page.click(".message.bot .keyboard button[data-callback$=':0:7']")
                await page.wait_for_selector(".message.bot .meta:has-text('edited')", timeout=20_000)
                await page.wait_for_selector("#toast:has-text('Recorded: 7')", timeout=10_000)
                edited = (await h.users.messages(USER))[1]
                assert edited["message_id"] == answer["message_id"] and "Recorded: 7" in edited["text"]
                assert page_errors == []

                # Reply to the bot's message with the right digit, by clicking it and typing.
                await page.click(f".message.bot[data-message-id='{answer['message_id']}'] .text")
                await page.wait_for_selector("#reply-bar:visible")
                await page.fill("#text", "7")
                await page.press("#text", "Enter")
                await h.users.wait_for_bot_message(USER, after=answer["message_id"] + 1, timeout=20)
                typed = next(m for m in await h.users.messages(USER) if m.get("text") == "7")
                assert typed["reply_to_message"]["message_id"] == answer["message_id"]

                await page.click("#command-list button:text('/stats')")
                await page.press("#text", "Enter")
                await page.wait_for_selector(".message.bot img.photo", timeout=30_000)
                await page.wait_for_function(
                    "[...document.querySelectorAll('.message.bot img.photo')].every(i => i.complete)")
                screenshot = os.environ.get("DIGITBOT_SCREENSHOT")
                await page.screenshot(path=screenshot or str(tmp_path / "webchat.png"), full_page=False)
                assert page_errors == []
            finally:
                await browser.close()

    asyncio.run(scenario())


def test_touch_strokes_draw_on_the_pad() -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason=NO_PLAYWRIGHT)

    async def scenario() -> None:
        async with harness() as h, playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                context = await browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                                    is_mobile=True)
                page = await context.new_page()
                await page.goto(h.server.page_url)
                pad = page.locator("#pad")
                box = await pad.bounding_box()
                points = [(60 + 15 * i, 60 + 14 * i) for i in range(12)]
                await pad.dispatch_event("pointerdown", {"pointerType": "touch", "pointerId": 7, "isPrimary": True,
                                                         "clientX": box["x"] + 60, "clientY": box["y"] + 60})
                for x, y in points:
                    await pad.dispatch_event("pointermove", {"pointerType": "touch", "pointerId": 7,
                                                             "clientX": box["x"] + x, "clientY": box["y"] + y})
                await pad.dispatch_event("pointerup", {"pointerType": "touch", "pointerId": 7})
                dark = await page.evaluate("""() => {
                    const pad = document.getElementById('pad');
                    const pixels = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
                    let dark = 0;
                    for (let i = 0; i < pixels.length; i += 4) if (pixels[i] < 128) dark++;
                    return dark;
                }""")
                assert dark > 1000, "a touch stroke left ink on the pad"
                await page.click("#send-drawing")
                message = await h.users.wait_for_message(1001, lambda m: "photo" in m, timeout=10)
                assert message["from"]["id"] == 1001
            finally:
                await browser.close()

    asyncio.run(scenario())


def test_caption_picker_position_lang_menu_and_enlarged_chart(tmp_path: Path, recognizer: Recognizer) -> None:
    """Issue 14's first-hour rough edges: a photo sent with a caption from the page is recorded at once;
    the picker's message says which position it fixes; /lang switches the page's language menu and
    words; the /stats chart opens full size when clicked."""
    playwright_api = pytest.importorskip("playwright.async_api", reason=NO_PLAYWRIGHT)
    from tests.bot.support import digits_photo

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h, playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1180, "height": 1060})
                page_errors: list[str] = []
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                await page.goto(h.server.page_url)
                await page.wait_for_selector("#status:text('connected')", timeout=10_000)

                # A photo with its digits as the caption: recorded without a tap.
                await page.fill("#caption", "38")
                await page.set_input_files("#file", files=[{"name": "38.jpg", "mimeType": "image/jpeg",
                                                            "buffer": digits_photo("38")}])
                await page.wait_for_selector(".message.bot .text:has-text('Recorded: 38')", timeout=20_000)
                sent = next(m for m in await h.users.messages(USER) if "photo" in m)
                assert sent["caption"] == "38" and await page.input_value("#caption") == ""
                await page.wait_for_selector(".message.user .text:text-is('38')")  # shown under the photo

                # A row of digits: open the picker for #2; the message says so until ⬅️ Back.
                await page.set_input_files("#file", files=[{"name": "row.jpg", "mimeType": "image/jpeg",
                                                            "buffer": digits_photo("4271")}])
                # (the answer with a 4th position: the first photo's answer has positions too)
                answer = page.locator(".message.bot:has(button[data-callback^='p:'][data-callback$=':3'])")
                await answer.wait_for(timeout=20_000)
                row = page.locator(f".message.bot[data-message-id='{await answer.get_attribute('data-message-id')}']")
                await row.locator("button[data-callback^='p:'][data-callback$=':1']").click()
                await row.locator(".text:has-text('Fixing digit 2 of 4')").wait_for(timeout=20_000)
                assert await row.locator("button[data-callback^='d:']").count() == 10
                await row.locator("button[data-callback^='b:']").click()
                await row.locator("button[data-callback^='p:']").first.wait_for(timeout=20_000)
                assert "Fixing" not in await row.locator(".text").inner_text()

                # /lang -> 中文: the menu and the page's own words switch, and so does Telegram's language.
                assert await page.inner_text("h2[data-i18n='drawTitle']") == "Draw a digit"
                await page.fill("#text", "/lang")
                await page.press("#text", "Enter")
                await page.click(".message.bot .keyboard button[data-callback='l:zh_CN']", timeout=20_000)
                await page.wait_for_function("document.getElementById('user-lang').value === 'zh-hans'",
                                             timeout=20_000)
                assert await page.inner_text("h2[data-i18n='drawTitle']") == "写一个数字"
                assert await page.get_attribute("#caption", "placeholder") == "照片里的数字，例如 4271（可不填）"
                assert await page.get_attribute("html", "lang") == "zh-Hans"
                users = {u["id"]: u for u in (await h.users.info())["users"]}
                assert users[USER]["language_code"] == "zh-hans"
                await page.fill("#text", "/lang en")  # typed, not tapped
                await page.press("#text", "Enter")
                await page.wait_for_function("document.getElementById('user-lang').value === 'en'", timeout=20_000)
                assert await page.inner_text("h2[data-i18n='drawTitle']") == "Draw a digit"
                # Opened again later, the page follows the last /lang button this user pressed.
                await page.reload()
                await page.wait_for_function("document.getElementById('user-lang').value === 'zh-hans'",
                                             timeout=20_000)

                # /stats: the chart opens full size on a click, and closes with Esc.
                await page.fill("#text", "/stats")
                await page.press("#text", "Enter")
                chart = page.locator(".message.bot img.photo").last
                await chart.wait_for(timeout=30_000)
                await page.wait_for_function(
                    "[...document.querySelectorAll('.message.bot img.photo')].every(i => i.complete)")
                shown = await chart.bounding_box()
                await chart.click()
                await page.wait_for_selector("#lightbox:visible")
                big = await page.locator("#lightbox-image").bounding_box()
                assert big["height"] > shown["height"] * 1.5  # the 1024x1280 chart, as large as the window allows
                assert await page.evaluate("document.getElementById('lightbox-image').naturalWidth") == 1024
                assert not await page.is_visible("#reply-bar")  # enlarging is not replying
                await page.keyboard.press("Escape")
                await page.wait_for_selector("#lightbox", state="hidden")
                assert page_errors == []
            finally:
                await browser.close()

    asyncio.run(scenario())
