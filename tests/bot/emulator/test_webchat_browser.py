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
from tests.bot.emulator.support import harness
from tests.bot.support import running_bot


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
