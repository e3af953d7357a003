"""The emulator speaks the Bot API: a real python-telegram-bot Bot drives it over loopback HTTP."""
# mypy: disable-error-code="union-attr, index"

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest
import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode

from tests.emulator.support import digit_png, harness

KEYBOARD = InlineKeyboardMarkup([[InlineKeyboardButton(str(d), callback_data=f"fix:1:{d}") for d in range(5)],
                                 [InlineKeyboardButton("✅", callback_data="ok:1")]])


def test_photo_reply_button_edit_round_trip(png: bytes) -> None:
    async def scenario() -> None:
        async with harness() as h:
            me = await h.bot.get_me()
            assert me.is_bot and me.username
            await h.users.set_user(42, first_name="Ann", language_code="zh-hans")
            photo_id = await h.users.send_photo(42, 42, png)

            (update,) = await h.bot.get_updates(timeout=1)
            message = update.message
            assert message.chat.type == "private" and message.from_user.language_code == "zh-hans"
            sides = [max(size.width, size.height) for size in message.photo]
            assert sides == [90, 320, 600], "downscaled sizes first, the original last"
            assert message.photo[-1].file_size == len(png)
            small = cv2.imdecode(np.frombuffer(bytes(await (await h.bot.get_file(message.photo[0].file_id))
                                                     .download_as_bytearray()), np.uint8), cv2.IMREAD_COLOR)
            assert small.shape[:2] == (90, 60)
            original = await (await h.bot.get_file(message.photo[-1].file_id)).download_as_bytearray()
            assert bytes(original) == png

            reply = await message.reply_text("I read <b>7</b> (98%)", parse_mode=ParseMode.HTML,
                                             reply_markup=KEYBOARD, do_quote=True)
            assert reply.text == "I read 7 (98%)" and reply.entities[0].type == "bold"
            assert reply.reply_to_message.message_id == photo_id
            seen = await h.users.wait_for_reply(42, photo_id, timeout=2)
            assert seen["reply_markup"]["inline_keyboard"][1][0]["callback_data"] == "ok:1"

            query_id = await h.users.press_button(42, 42, reply.message_id, "fix:1:3")
            (update,) = await h.bot.get_updates(offset=update.update_id + 1, timeout=1)
            query = update.callback_query
            assert (query.id, query.data, query.from_user.id) == (query_id, "fix:1:3", 42)
            assert query.message.message_id == reply.message_id and query.chat_instance
            await query.answer("Saved: 3")
            assert (await h.users.callback_answer(query_id))["text"] == "Saved: 3"
            edited = await query.edit_message_text("Recorded 3")
            assert edited.edit_date is not None and edited.reply_markup is None

            history = await h.users.messages(42)
            assert [m["message_id"] for m in history] == [photo_id, reply.message_id]
            assert history[1]["text"] == "Recorded 3" and "reply_markup" not in history[1]

            chart = await h.bot.send_photo(42, digit_png("5", (480, 640)), caption="/stats chart")
            assert chart.photo[-1].width == 640 and chart.caption == "/stats chart"
            assert await h.users.download(chart.photo[-1].file_id) == digit_png("5", (480, 640))

    asyncio.run(scenario())


def test_telegram_errors() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_text(7, 7, "hi")
            bad_button = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
            cases = [
                (lambda: h.bot.send_message(7, "x", reply_markup=bad_button), "Button_data_invalid"),
                (lambda: h.bot.send_message(7, " "), "Message text is empty"),
                (lambda: h.bot.send_message(404, "x"), "Chat not found"),
                (lambda: h.bot.send_message(7, "1 < 2", parse_mode=ParseMode.HTML), "Can't parse entities"),
                (lambda: h.bot.send_message(7, "<blink>x</blink>", parse_mode=ParseMode.HTML), "Unsupported start tag"),
                (lambda: h.bot.send_message(7, "x" * 4097), "Message is too long"),
                (lambda: h.bot.edit_message_text("x", chat_id=7, message_id=99), "Message to edit not found"),
                (lambda: h.bot.edit_message_text("x", chat_id=7, message_id=1), "Message can't be edited"),
                (lambda: h.bot.send_message(7, "x", reply_to_message_id=99), "Message to be replied not found"),
                (lambda: h.bot.answer_callback_query("123"), "Query is too old"),
                (lambda: h.bot.get_file("nope"), "Invalid file_id"),
                (lambda: h.bot.delete_message(7, 99), "Message to delete not found"),
            ]
            for call, expected in cases:
                with pytest.raises(telegram.error.BadRequest, match=f"(?i){expected}"):
                    await call()
            sent = await h.bot.send_message(7, "same", reply_markup=KEYBOARD)
            with pytest.raises(telegram.error.BadRequest, match="Message is not modified"):
                await h.bot.edit_message_text("same", chat_id=7, message_id=sent.message_id, reply_markup=KEYBOARD)
            await h.users.send_photo(7, 7, b"%PDF-1.4 " + bytes(21 * 1024 * 1024), as_document=True,
                                     file_name="huge.pdf")
            updates = await h.bot.get_updates()
            with pytest.raises(telegram.error.BadRequest, match="File is too big"):
                await h.bot.get_file(updates[-1].message.document.file_id)

    asyncio.run(scenario())


def test_raw_http_status_codes_and_body_encodings() -> None:
    async def scenario() -> None:
        async with harness() as h:
            session = h.users.session
            base = f"{h.server.bot_api_url}{h.server.token}"
            async with session.get(f"{base}/noSuchMethod") as response:
                assert response.status == 404
                assert await response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
            async with session.get(f"{h.server.bot_api_url}1:wrong/getMe") as response:
                assert response.status == 401 and (await response.json())["description"] == "Unauthorized"
            await h.users.send_text(5, 5, "hello")
            async with session.post(f"{base}/sendMessage", json={"chat_id": 5, "text": "json"}) as response:
                assert (await response.json())["result"]["text"] == "json"
            async with session.post(f"{base}/sendMessage", data={"chat_id": "5", "text": "form"}) as response:
                assert (await response.json())["result"]["text"] == "form"
            async with session.get(f"{base}/sendMessage", params={"chat_id": "5", "text": "query"}) as response:
                assert (await response.json())["result"]["chat"]["id"] == 5
            async with session.post(f"{base}/getUpdates", data=b"{", headers={"Content-Type": "application/json"}) \
                    as response:
                assert response.status == 400
            async with session.get(f"{h.server.file_api_url}{h.server.token}/photos/none.jpg") as response:
                assert response.status == 404

    asyncio.run(scenario())


def test_long_polling_offsets_limit_and_allowed_updates(png: bytes) -> None:
    async def scenario() -> None:
        async with harness() as h:
            started = time.monotonic()
            poll = asyncio.create_task(h.bot.get_updates(timeout=5))
            await asyncio.sleep(0.2)
            await h.users.send_text(1, 1, "wake up")
            (update,) = await poll
            assert time.monotonic() - started < 2, "a long poll returns as soon as an update arrives"
            for text in ("a", "b", "c"):
                await h.users.send_text(1, 1, text)
            unconfirmed = await h.bot.get_updates(limit=2)
            assert [u.message.text for u in unconfirmed] == ["wake up", "a"]
            rest = await h.bot.get_updates(offset=update.update_id + 2)
            assert [u.message.text for u in rest] == ["b", "c"]
            sent = await h.bot.send_message(1, "pick", reply_markup=KEYBOARD)
            await h.users.press_button(1, 1, sent.message_id, "ok:1")
            only_messages = await h.bot.get_updates(offset=rest[-1].update_id + 1, allowed_updates=["message"])
            assert only_messages == ()
            started = time.monotonic()
            assert await h.bot.get_updates(timeout=1) == ()
            assert time.monotonic() - started >= 0.9

    asyncio.run(scenario())


def test_a_newer_poll_ends_the_older_one_with_conflict() -> None:
    async def scenario() -> None:
        async with harness() as h:
            url = f"{h.server.bot_api_url}{h.server.token}/getUpdates"

            async def poll(timeout: int) -> tuple[int, dict]:
                async with h.users.session.post(url, json={"timeout": timeout}) as response:
                    return response.status, await response.json()

            first = asyncio.create_task(poll(5))
            await asyncio.sleep(0.2)
            second = asyncio.create_task(poll(1))
            status, body = await asyncio.wait_for(first, 2)
            assert status == 409 and body["description"].startswith("Conflict: terminated by other getUpdates")
            assert await second == (200, {"ok": True, "result": []})

    asyncio.run(scenario())


def test_group_chat_commands_replies_and_documents(png: bytes) -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.create_group(-100, [1, 2], title="Class 3")
            await h.users.set_user(2, first_name="Bo", language_code="en")
            command_id = await h.users.send_command(1, -100, "stats@digitbot_emulator_bot")
            bot_message = await h.bot.send_message(-100, "Send a digit", reply_markup=KEYBOARD)
            reply_id = await h.users.send_text(2, -100, "4271", reply_to=bot_message.message_id)
            await h.users.send_photo(2, -100, png, as_document=True, file_name="seven.png", caption="mine")
            command, reply, document = (u.message for u in await h.bot.get_updates())
            assert command.chat.type == "group" and command.chat.title == "Class 3"
            assert command.entities[0].type == "bot_command" and command.message_id == command_id
            assert command.text.split("@")[0] == "/stats"
            assert reply.from_user.id == 2 and reply.message_id == reply_id
            assert reply.reply_to_message.message_id == bot_message.message_id
            assert reply.reply_to_message.from_user.is_bot
            assert document.document.mime_type == "image/png" and document.document.file_name == "seven.png"
            assert document.caption == "mine" and document.photo == ()
            await h.users.press_button(2, -100, bot_message.message_id, "fix:1:4")
            (update,) = await h.bot.get_updates(offset=-1)
            assert update.callback_query.from_user.first_name == "Bo"

    asyncio.run(scenario())


def test_commands_per_scope_and_language_and_chat_action() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.bot.set_my_commands([("start", "Start"), ("stats", "Your accuracy")])
            await h.bot.set_my_commands([("start", "开始")], language_code="zh")
            assert [c.command for c in await h.bot.get_my_commands()] == ["start", "stats"]
            assert (await h.bot.get_my_commands(language_code="zh"))[0].description == "开始"
            with pytest.raises(telegram.error.BadRequest, match="Bot_command_invalid"):
                await h.bot.set_my_commands([("Bad-Name", "x")])
            await h.users.send_text(3, 3, "hi")
            assert await h.bot.send_chat_action(3, "upload_photo")
            assert (await h.users.chat(3))["chat_action"] == "upload_photo"
            assert await h.bot.delete_webhook(drop_pending_updates=True)
            assert await h.bot.get_updates() == ()
            assert await h.bot.delete_message(3, 1)
            assert await h.users.messages(3) == []

    asyncio.run(scenario())
