"""The web chat in a real headless Chromium (Playwright): draw a digit, get the answer, correct it.

Runs when DIGITBOT_TEST_CHROMIUM names a Chromium binary (e.g. /usr/bin/chromium).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.bot.emulator.support import harness, run_fake_bot

CHROMIUM = os.environ.get("DIGITBOT_TEST_CHROMIUM", "")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM or not Path(CHROMIUM).exists(),
                       reason="set DIGITBOT_TEST_CHROMIUM to a Chromium binary"),
]


async def draw_seven(page: object) -> None:
    pad = page.locator("#pad")  # type: ignore[attr-defined]
    box = await pad.bounding_box()
    mouse = page.mouse  # type: ignore[attr-defined]
    await mouse.move(box["x"] + 70, box["y"] + 60)
    await mouse.down()
    await mouse.move(box["x"] + 210, box["y"] + 60, steps=8)
    await mouse.move(box["x"] + 120, box["y"] + 240, steps=8)
    await mouse.up()


def test_draw_send_see_answer_and_correct_it(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")

    async def scenario() -> None:
        async with harness() as h:
            await h.bot.set_my_commands([("start", "Start"), ("stats", "Your accuracy")])
            bot_task = asyncio.create_task(run_fake_bot(h.bot))
            try:
                async with playwright_api.async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                    page = await browser.new_page(viewport={"width": 1100, "height": 760})
                    errors: list[str] = []
                    page.on("pageerror", lambda error: errors.append(str(error)))
                    await page.goto(h.server.page_url)
                    await page.wait_for_selector("#status:text('connected')", timeout=10_000)
                    await page.select_option("#user-lang", "zh-hans")

                    await draw_seven(page)
                    await page.click("#send-drawing")
                    await page.wait_for_selector(".message.bot .keyboard button", timeout=10_000)
                    (user_message, reply) = await h.users.messages(1001)
                    assert user_message["from"]["language_code"] == "zh-hans"
                    drawing = await h.users.download(user_message["photo"][-1]["file_id"])
                    assert drawing.startswith(b"\x89PNG") and len(drawing) > 1000, "the canvas was sent"

                    await page.click(".message.bot .keyboard button[data-callback='fix:1']")
                    await page.wait_for_selector(".message.bot:has-text('Recorded: 1')", timeout=10_000)
                    await page.wait_for_selector("#toast:has-text('Saved: 1')", timeout=5_000)
                    edited = (await h.users.messages(1001))[1]
                    assert edited["message_id"] == reply["message_id"] and "edit_date" in edited

                    await page.click(".message.bot")  # reply to the bot's message by clicking it
                    await page.fill("#text", "1")
                    await page.press("#text", "Enter")
                    await page.wait_for_selector(".message.bot:has-text('You said: 1')", timeout=10_000)
                    typed = (await h.users.messages(1001))[2]
                    assert typed["reply_to_message"]["message_id"] == reply["message_id"]
                    await page.screenshot(path=str(tmp_path / "webchat.png"))
                    assert errors == []
                    await browser.close()
            finally:
                bot_task.cancel()

    asyncio.run(scenario())
