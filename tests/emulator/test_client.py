"""The client API: what tests and load generators use to act as Telegram users."""

from __future__ import annotations

import asyncio
import time

import pytest
from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from emulator.client import EmulatorError
from tests.emulator.support import digit_png, harness


def test_waiting_for_replies_and_edits() -> None:
    async def scenario() -> None:
        async with harness() as h:
            sent = await h.users.send_text(9, 9, "hello")

            async def answer_later() -> None:
                await asyncio.sleep(0.3)
                await h.bot.send_message(9, "unrelated")
                message = await h.bot.send_message(9, "hi!", reply_to_message_id=sent)
                await asyncio.sleep(0.2)
                await h.bot.edit_message_text("hi again", chat_id=9, message_id=message.message_id)

            task = asyncio.create_task(answer_later())
            started = time.monotonic()
            reply = await h.users.wait_for_reply(9, sent, timeout=5)
            assert reply["text"] == "hi!" and time.monotonic() - started < 2
            first = await h.users.wait_for_bot_message(9, after=sent)
            assert first["text"] == "unrelated"
            edited = await h.users.wait_for_message(9, lambda m: m.get("text") == "hi again", timeout=5)
            assert edited["message_id"] == reply["message_id"] and "edit_date" in edited
            await task
            with pytest.raises(TimeoutError):
                await h.users.wait_for_bot_message(9, timeout=0.3)

    asyncio.run(scenario())


def test_chat_long_poll_wakes_on_change_and_times_out() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_text(4, 4, "x")
            version = (await h.users.chat(4))["version"]
            started = time.monotonic()
            assert (await h.users.chat(4, since=version, timeout=0.3))["version"] == version
            assert time.monotonic() - started >= 0.25
            waiting = asyncio.create_task(h.users.chat(4, since=version, timeout=5))
            await asyncio.sleep(0.1)
            await h.bot.send_chat_action(4, "typing")
            snapshot = await asyncio.wait_for(waiting, 2)
            assert snapshot["version"] > version and snapshot["chat_action"] == "typing"

    asyncio.run(scenario())


def test_bad_user_actions_get_clear_errors() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_text(1, 1, "hi")
            message = await h.bot.send_message(1, "pick", reply_markup=InlineKeyboardMarkup(
                [[InlineKeyboardButton("ok", callback_data="ok")]]))
            attempts = [
                (h.users.send_text(1, 1, "  "), "message text is empty"),
                (h.users.send_text(1, 2, "hi"), "own private chat"),
                (h.users.send_text(1, 1, "x", reply_to=999), "message to be replied not found"),
                (h.users.press_button(1, 1, message.message_id, "nope"), "no inline button"),
                (h.users.press_button(1, 1, 999, "ok"), "message not found"),
                (h.users.send_photo(1, 1, b"not an image"), "send it as a file"),
                (h.users.set_user(-5), "positive id"),
                (h.users.create_group(5, [1]), "negative"),
            ]
            for attempt, expected in attempts:
                with pytest.raises(EmulatorError, match=expected) as error:
                    await attempt
                assert error.value.status == 400
            with pytest.raises(EmulatorError) as error:
                await h.users.download("missing")
            assert error.value.status == 404

    asyncio.run(scenario())


def test_photo_sizes_follow_telegram_and_keep_original_on_request() -> None:
    big = digit_png("3", (3000, 2250))

    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_photo(2, 2, big)
            await h.users.send_photo(2, 2, big, keep_original=True)
            (downscaled, kept) = (m["photo"] for m in await h.users.messages(2))
            assert [max(s["width"], s["height"]) for s in downscaled] == [90, 320, 800, 1280]
            assert (await h.users.download(downscaled[-1]["file_id"])).startswith(b"\xff\xd8"), "a JPEG"
            assert [max(s["width"], s["height"]) for s in kept][-2:] == [1280, 3000]
            assert await h.users.download(kept[-1]["file_id"]) == big

    asyncio.run(scenario())


def test_users_languages_groups_and_reset() -> None:
    async def scenario() -> None:
        async with harness() as h:
            assert (await h.users.set_user(3, language_code="zh-hans"))["language_code"] == "zh-hans"
            await h.users.create_group(-7, [3, 4], title="Study group")
            await h.users.send_text(4, -7, "from 4")
            await h.users.set_user(3, first_name="Chen", language_code="en")
            await h.users.send_photo(3, -7, digit_png("1", (200, 150)))
            snapshot = await h.users.chat(-7)
            assert snapshot["chat"] == {"id": -7, "type": "group", "title": "Study group"}
            assert snapshot["member_ids"] == [3, 4]
            first, second = snapshot["messages"]
            assert first["from"]["id"] == 4 and second["from"] == {
                "id": 3, "is_bot": False, "first_name": "Chen", "language_code": "en"}
            before = await h.bot.get_updates()
            await h.users.reset()
            assert await h.users.messages(-7) == [] and (await h.users.info())["users"] == []
            await h.users.send_text(5, 5, "after reset")
            (after,) = await h.bot.get_updates(offset=before[-1].update_id + 1)
            assert after.update_id > before[-1].update_id, "update ids keep growing across resets"

    asyncio.run(scenario())


def test_other_web_sites_cannot_act_as_users() -> None:
    async def scenario() -> None:
        async with harness() as h:
            url = f"{h.server.base_url}/emulator/api/chats/1/text"
            body = {"user_id": 1, "text": "hi"}
            async with h.users.session.post(url, json=body, headers={"Origin": "https://evil.example"}) as response:
                assert response.status == 403
            async with h.users.session.post(url, json=body, headers={"Origin": h.server.base_url}) as response:
                assert response.status == 200
            assert [m["text"] for m in await h.users.messages(1)] == ["hi"]

    asyncio.run(scenario())
