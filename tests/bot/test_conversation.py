"""End to end: the real Application over loopback HTTP against the local Bot API emulator."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import func, select

from core.recognize import Recognizer
from storage import repository as repo
from storage.models import INBOX_PENDING, InboxUpdate, Reading, User
from tests.bot.support import BotHarness, digits_photo, running_bot

ANN, BOB = 42, 43


def _reading_id(reply: dict[str, Any]) -> int:
    return int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])


def _labels(harness: BotHarness, user: int, reading_id: int) -> list[int | None]:
    with harness.sessions() as session:
        view = repo.get_reading(session, telegram_id=user, reading_id=reading_id)
        assert view is not None
        return [d.label for d in view.digits]


def _buttons(message: dict[str, Any]) -> list[str]:
    return [b["callback_data"] for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]


def test_photo_button_correction_undo_and_stats(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, first_name="Ann", language_code="en")
            reply = await h.photo_reply(ANN, ANN, digits_photo("7"))
            assert reply["text"].startswith("I read: ")
            rid = _reading_id(reply)
            assert _buttons(reply) == [f"c:{rid}"] + [f"d:{rid}:0:{d}" for d in range(10)]
            for _ in range(100):  # the answer is stored with which model gave it, and the reply's id
                with h.sessions() as session:
                    view = repo.get_reading(session, telegram_id=ANN, reading_id=rid)
                assert view is not None and view.digits[0].source == "base"
                if view.bot_message_id is not None:
                    break
                await asyncio.sleep(0.02)
            assert view is not None and view.bot_message_id == reply["message_id"]

            answer = await h.press(ANN, ANN, reply["message_id"], f"d:{rid}:0:3")
            assert answer["text"] == "Recorded: 3"
            assert _labels(h, ANN, rid) == [3]
            edited = await h.message(ANN, reply["message_id"])
            assert "Recorded: 3" in edited["text"] and f"u:{rid}" in _buttons(edited)

            await h.press(ANN, ANN, reply["message_id"], f"d:{rid}:0:5")  # a second tap changes the label
            assert _labels(h, ANN, rid) == [5]
            assert "Recorded: 5" in (await h.message(ANN, reply["message_id"]))["text"]
            await h.press(ANN, ANN, reply["message_id"], f"u:{rid}")  # undo: nothing recorded
            assert _labels(h, ANN, rid) == [None]
            assert f"u:{rid}" not in _buttons(await h.message(ANN, reply["message_id"]))
            await h.press(ANN, ANN, reply["message_id"], f"c:{rid}")  # confirm the answer as given
            confirmed = _labels(h, ANN, rid)
            assert confirmed == [int(reply["text"].split()[2])]

            stats = await h.command_reply(ANN, ANN, "stats")
            assert "Labelled digits: 1" in stats["text"] and "Right overall: 100%" in stats["text"]
            chart = await h.users.wait_for_bot_message(ANN, lambda m: "photo" in m, after=stats["message_id"])
            image = Image.open(io.BytesIO(await h.users.download(chart["photo"][-1]["file_id"])))
            assert image.format == "PNG" and image.size[0] > 500

    asyncio.run(scenario())


def test_row_of_digits_corrected_by_reply_and_by_position(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            reply = await h.photo_reply(ANN, ANN, digits_photo("4271"), as_document=True, file_name="row.jpg",
                                        mime_type="image/jpeg")
            rid, mid = _reading_id(reply), reply["message_id"]
            assert _buttons(reply) == [f"c:{rid}"] + [f"p:{rid}:{pos}" for pos in range(4)]
            assert "reply to this message" in reply["text"]

            not_digits = await h.text_reply(ANN, ANN, "four", reply_to=mid)
            assert "digits only" in not_digits["text"]
            assert _labels(h, ANN, rid) == [None] * 4

            done = await h.text_reply(ANN, ANN, "４2 7 1", reply_to=mid)  # full-width and spaces are fine
            assert done["text"] == "Recorded: 4271"
            assert _labels(h, ANN, rid) == [4, 2, 7, 1]
            assert "Recorded: 4271" in (await h.message(ANN, mid))["text"]

            await h.press(ANN, ANN, mid, f"p:{rid}:0")  # the picker's message says which position it fixes
            picking = await h.message(ANN, mid)
            assert "Fixing digit 1 of 4 (now 4)" in picking["text"] and "Recorded: 4271" in picking["text"]
            await h.press(ANN, ANN, mid, f"b:{rid}")  # ⬅️ Back: the overview and its text again
            back = await h.message(ANN, mid)
            assert "Fixing" not in back["text"] and "Recorded: 4271" in back["text"]
            assert _buttons(back)[1:5] == [f"p:{rid}:{pos}" for pos in range(4)]
            await h.press(ANN, ANN, mid, f"p:{rid}:2")  # pick position 3, then the digit
            picking = await h.message(ANN, mid)
            assert _buttons(picking) == [f"d:{rid}:2:{d}" for d in range(10)] + [f"b:{rid}"]
            assert "Fixing digit 3 of 4 (now 7)" in picking["text"]
            await h.press(ANN, ANN, mid, f"d:{rid}:2:9")
            assert _labels(h, ANN, rid) == [4, 2, 9, 1]
            assert "Recorded: 4291" in (await h.message(ANN, mid))["text"]
            assert "Fixing" not in (await h.message(ANN, mid))["text"]  # the picker closed with the digit
            captioned = await h.photo_reply(ANN, ANN, digits_photo("38"), caption="３8")
            assert "Recorded: 38" in captioned["text"]  # a caption of the right length labels at once
            assert _labels(h, ANN, _reading_id(captioned)) == [3, 8]
            confirm = _buttons(await h.message(ANN, mid))[0]
            await h.press(ANN, ANN, mid, confirm)  # ✅ now confirms 4291, it does not undo the correction
            assert _labels(h, ANN, rid) == [4, 2, 9, 1]

    asyncio.run(scenario())


def _true_text(harness: BotHarness, user: int, reading_id: int) -> str | None:
    with harness.sessions() as session:
        view = repo.get_reading(session, telegram_id=user, reading_id=reading_id)
        assert view is not None
        return view.true_text


def test_reply_with_another_number_of_digits_is_kept_whole(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            reply = await h.photo_reply(ANN, ANN, digits_photo("4271"), as_document=True, file_name="row.jpg",
                                        mime_type="image/jpeg")
            rid, mid = _reading_id(reply), reply["message_id"]
            assert _buttons(reply) == [f"c:{rid}"] + [f"p:{rid}:{pos}" for pos in range(4)]

            # Two touching 1s read as one: the whole answer is kept, no digit is labelled from it.
            kept = await h.text_reply(ANN, ANN, "4271 1", reply_to=mid)
            assert kept["text"] == "Recorded: 42711 (I had read 4271; I'll keep your whole answer)"
            assert _true_text(h, ANN, rid) == "42711"
            assert _labels(h, ANN, rid) == [None] * 4
            edited = await h.message(ANN, mid)
            assert "Corrected: 42711" in edited["text"] and f"u:{rid}" in _buttons(edited)
            stats = await h.command_reply(ANN, ANN, "stats")
            assert "No labelled digits yet" in stats["text"]  # per-digit stats learn nothing from it

            not_digits = await h.text_reply(ANN, ANN, "42a711", reply_to=mid)
            assert "digits only" in not_digits["text"]
            too_long = await h.text_reply(ANN, ANN, "7" * 33, reply_to=mid)
            assert too_long["text"] == "That is too long for one photo; please reply with at most 32 digits."
            assert _true_text(h, ANN, rid) == "42711"

            # The latest answer wins: a reply of the right length labels the digits and replaces it ...
            done = await h.text_reply(ANN, ANN, "4271", reply_to=mid)
            assert done["text"] == "Recorded: 4271"
            assert (_labels(h, ANN, rid), _true_text(h, ANN, rid)) == ([4, 2, 7, 1], None)
            assert "Recorded: 4271" in (await h.message(ANN, mid))["text"]
            # ... and a whole answer again leaves those labels as they are, until ↩️ Undo takes back both.
            await h.text_reply(ANN, ANN, "427", reply_to=mid)
            assert (_labels(h, ANN, rid), _true_text(h, ANN, rid)) == ([4, 2, 7, 1], "427")
            await h.press(ANN, ANN, mid, f"u:{rid}")
            assert (_labels(h, ANN, rid), _true_text(h, ANN, rid)) == ([None] * 4, None)
            assert f"u:{rid}" not in _buttons(await h.message(ANN, mid))

    asyncio.run(scenario())


def test_forget_deletes_everything_and_old_buttons_say_so(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            reply = await h.photo_reply(ANN, ANN, digits_photo("5"))
            rid = _reading_id(reply)
            await h.press(ANN, ANN, reply["message_id"], f"d:{rid}:0:5")
            ask = await h.command_reply(ANN, ANN, "forget")
            assert _buttons(ask) == [f"f:yes:{ANN}", f"f:no:{ANN}"]
            await h.press(ANN, ANN, ask["message_id"], f"f:yes:{ANN}")
            assert "deleted" in (await h.message(ANN, ask["message_id"]))["text"]
            with h.sessions() as session:
                assert repo.get_user(session, telegram_id=ANN) is None
            stale = await h.press(ANN, ANN, reply["message_id"], f"d:{rid}:0:6")
            assert "no longer have this photo" in stale["text"] and stale["show_alert"]
            assert _buttons(await h.message(ANN, reply["message_id"])) == []  # the dead keyboard is removed

            cancel = await h.command_reply(ANN, ANN, "forget")
            await h.press(ANN, ANN, cancel["message_id"], f"f:no:{ANN}")
            assert "Nothing was deleted" in (await h.message(ANN, cancel["message_id"]))["text"]

    asyncio.run(scenario())


def test_forget_confirmed_again_says_it_is_already_done(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            for user, language, done in ((ANN, "en", "Already done: nothing is stored about you."),
                                         (BOB, "zh-hans", "已经完成：我这里没有保存任何关于你的数据。")):
                await h.users.set_user(user, first_name="U", language_code=language)
                reply = await h.photo_reply(user, user, digits_photo("5"))
                await h.press(user, user, reply["message_id"], f"d:{_reading_id(reply)}:0:5")
                first = await h.command_reply(user, user, "forget")
                await h.press(user, user, first["message_id"], f"f:yes:{user}")
                text = (await h.message(user, first["message_id"]))["text"]
                count = re.search(r"\d+", text)
                assert count is not None and int(count.group()) > 1  # the user, the reading, its digit, ...
                again = await h.command_reply(user, user, "forget")  # a second /forget once all is gone
                answer = await h.press(user, user, again["message_id"], f"f:yes:{user}")
                assert answer["text"] == done
                edited = await h.message(user, again["message_id"])
                assert edited["text"] == done and _buttons(edited) == []
                assert (await h.message(user, first["message_id"]))["text"] == text
                with h.sessions() as session:
                    assert repo.get_user(session, telegram_id=user) is None  # not re-created by the press

    asyncio.run(scenario())


def test_forget_pressed_twice_keeps_the_real_count(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            reply = await h.photo_reply(ANN, ANN, digits_photo("5"))
            await h.press(ANN, ANN, reply["message_id"], f"d:{_reading_id(reply)}:0:5")
            forget = h.services.forget

            async def slow_when_nothing_left(telegram_id: int) -> int:
                deleted = await forget(telegram_id)
                if deleted == 0:  # the second tap's answer comes back last
                    await asyncio.sleep(0.5)
                return deleted

            h.services.forget = slow_when_nothing_left  # type: ignore[method-assign]
            ask = await h.command_reply(ANN, ANN, "forget")
            # a double tap: both presses reach the bot before it removes the buttons
            queries = [await h.users.press_button(ANN, ANN, ask["message_id"], f"f:yes:{ANN}") for _ in range(2)]
            answers = []
            for query in queries:
                while not (answer := await h.users.callback_answer(query)).get("answered"):
                    await asyncio.sleep(0.02)
                answers.append(answer["text"])
            text = (await h.message(ANN, ask["message_id"]))["text"]
            assert text.startswith("Done: everything I stored about you is deleted (")
            assert int(text.split("(")[1].split()[0]) > 1  # the real count, not "(0 records)"
            assert sorted(answers) == ["Already done: nothing is stored about you.", "Deleted."]

    asyncio.run(scenario())


def test_group_only_the_sender_labels(tmp_path: Path, recognizer: Recognizer) -> None:
    group = -1001

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, first_name="Ann", language_code="en")
            await h.users.set_user(BOB, first_name="Bob", language_code="en")
            await h.users.create_group(group, [ANN, BOB], title="Class")
            for user in (ANN, BOB):  # started in private: their photos in groups are read
                await h.command_reply(user, user, "start")
            reply = await h.photo_reply(ANN, group, digits_photo("3"))
            rid, mid = _reading_id(reply), reply["message_id"]

            refused = await h.press(BOB, group, mid, f"d:{rid}:0:8")
            assert refused["text"] == "Only the person who sent the photo can correct this."
            assert refused["show_alert"]
            by_text = await h.text_reply(BOB, group, "8", reply_to=mid)
            assert by_text["text"] == "Only the person who sent the photo can correct this."
            assert _labels(h, ANN, rid) == [None]
            ask = await h.command_reply(ANN, group, "forget")
            nope = await h.press(BOB, group, ask["message_id"], f"f:yes:{ANN}")
            assert "Only the person who asked" in nope["text"]
            with h.sessions() as session:
                assert repo.get_user(session, telegram_id=ANN) is not None

            await h.press(ANN, group, mid, f"d:{rid}:0:3")
            assert _labels(h, ANN, rid) == [3]

            # callback_data forged to name Ann's reading, on a message of Bob's own
            own = await h.photo_reply(BOB, group, digits_photo("1"))
            forged = f"d:{rid}:0:0"
            message = h.server.state.get_message(h.server.state.chats[group], own["message_id"], missing="gone")
            message["reply_markup"]["inline_keyboard"].append([{"text": "x", "callback_data": forged}])
            answer = await h.press(BOB, group, own["message_id"], forged)
            assert answer["text"] == "Only the person who sent the photo can correct this."
            assert _labels(h, ANN, rid) == [3]

    asyncio.run(scenario())


async def _settled(h: BotHarness) -> None:
    """Every update sent so far has been fetched by the bot and its handler has returned."""
    for _ in range(600):
        with h.sessions() as session:
            pending = session.scalar(select(func.count()).select_from(InboxUpdate)
                                     .where(InboxUpdate.state == INBOX_PENDING))
        if not h.server.state.updates and not pending:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("updates still being handled")


def test_groups_read_only_members_who_started_the_bot_in_private(tmp_path: Path, recognizer: Recognizer) -> None:
    group = -1002
    note = "In groups I read only photos (and image files) from people who have sent me /start in a private chat"

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, first_name="Ann", language_code="en")
            await h.users.set_user(BOB, first_name="Bob", language_code="zh-hans")
            await h.users.create_group(group, [ANN, BOB], title="Class")
            pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

            # Nobody has started the bot in private: photos, image files and other files are ignored.
            silent = [await h.users.send_photo(BOB, group, digits_photo("5")),
                      await h.users.send_photo(BOB, group, digits_photo("6", fmt=".png"), as_document=True,
                                               file_name="six.png", mime_type="image/png"),
                      await h.users.send_photo(ANN, group, digits_photo("7")),
                      await h.users.send_photo(ANN, group, pdf, as_document=True, file_name="notes.pdf",
                                               mime_type="application/pdf")]
            await _settled(h)

            start = await h.command_reply(ANN, ANN, "start")
            assert note in start["text"]
            with h.sessions() as session:
                ann = repo.get_user(session, telegram_id=ANN)
                assert ann is not None and ann.started_private_at is not None
            help_zh = await h.command_reply(BOB, group, "help")
            assert "在群组里，我只读取在私聊中给我发过 /start 的人" in help_zh["text"]

            # Ann has: her photo and image file are read; her PDF and all of Bob's posts are not.
            photo = await h.photo_reply(ANN, group, digits_photo("3"))
            assert photo["text"].startswith("I read: ")
            document = await h.photo_reply(ANN, group, digits_photo("4", fmt=".png"), as_document=True,
                                           file_name="four.png", mime_type="image/png")
            assert document["text"].startswith("I read: ")
            silent += [await h.users.send_photo(ANN, group, pdf, as_document=True, file_name="more.pdf",
                                                mime_type="application/pdf"),
                       await h.users.send_photo(BOB, group, digits_photo("8"))]
            await _settled(h)
            answered = {m.get("reply_to_message", {}).get("message_id") for m in await h.users.messages(group)
                        if m["from"]["is_bot"]}
            assert answered.isdisjoint(silent)
            with h.sessions() as session:
                assert repo.get_user(session, telegram_id=BOB) is None  # nothing stored about Bob
                assert session.scalar(select(func.count()).select_from(Reading)) == 2

            # /start in a group is not consent; /forget withdraws it.
            await h.command_reply(BOB, group, "start")
            ask = await h.command_reply(ANN, ANN, "forget")
            await h.press(ANN, ANN, ask["message_id"], f"f:yes:{ANN}")
            silent = [await h.users.send_photo(BOB, group, digits_photo("9")),
                      await h.users.send_photo(ANN, group, digits_photo("2"))]
            await _settled(h)
            answered = {m.get("reply_to_message", {}).get("message_id") for m in await h.users.messages(group)
                        if m["from"]["is_bot"]}
            assert answered.isdisjoint(silent)
            with h.sessions() as session:
                assert session.scalar(select(func.count()).select_from(User)) == 0

    asyncio.run(scenario())


def test_languages_follow_telegram_and_lang(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, first_name="安", language_code="zh-hans")
            start = await h.command_reply(ANN, ANN, "start")
            assert start["text"].startswith("你好！")
            reply = await h.photo_reply(ANN, ANN, digits_photo("2"))
            assert reply["text"].startswith("我认出的是")
            choose = await h.command_reply(ANN, ANN, "lang")
            assert _buttons(choose) == ["l:en", "l:zh_CN"]
            await h.press(ANN, ANN, choose["message_id"], "l:en")
            assert (await h.message(ANN, choose["message_id"]))["text"] == "Language set to English."
            assert (await h.command_reply(ANN, ANN, "help"))["text"].startswith("Send a photo")
            back = await h.command_reply(ANN, ANN, "lang", "中文")
            assert back["text"] == "语言已设置为中文。"
            assert "我不认识这个命令" in (await h.command_reply(ANN, ANN, "nonsense"))["text"]
            await h.users.set_user(BOB, first_name="Bob", language_code="zh-hans")
            await h.photo_reply(BOB, BOB, digits_photo("1"))
            assert (await h.command_reply(BOB, BOB, "help"))["text"].startswith("发一张")
            await h.users.set_user(BOB, first_name="Bob", language_code="en")  # no /lang: Telegram's is followed
            assert (await h.command_reply(BOB, BOB, "help"))["text"].startswith("Send a photo")
            commands = h.server.state.commands  # setMyCommands in both languages
            assert any("zh" in str(key) for key in commands) and len(commands) >= 2

    asyncio.run(scenario())


def test_bad_inputs_get_friendly_answers(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            pdf = await h.photo_reply(ANN, ANN, b"%PDF-1.4 not an image", as_document=True, file_name="a.pdf",
                                      mime_type="application/pdf")
            assert "doesn't look like an image" in pdf["text"]
            corrupt = await h.photo_reply(ANN, ANN, b"\x89PNG\r\n\x1a\n broken", as_document=True,
                                          file_name="b.png", mime_type="image/png")
            assert "doesn't look like an image" in corrupt["text"]
            blank = await h.photo_reply(ANN, ANN, digits_photo(""))
            assert "couldn't find any digits" in blank["text"]
            big = await h.photo_reply(ANN, ANN, b"\0" * (20 * 1024 * 1024 + 1), as_document=True,
                                      file_name="big.png", mime_type="image/png")
            assert "too large" in big["text"]
            assert "I don't know that command" in (await h.command_reply(ANN, ANN, "frobnicate"))["text"]
            assert "Send me a photo" in (await h.text_reply(ANN, ANN, "hello " * 500))["text"]
            help_message = await h.command_reply(ANN, ANN, "help")
            not_ours = await h.text_reply(ANN, ANN, "12", reply_to=help_message["message_id"])
            assert "isn't one of my answers" in not_ours["text"]
            chat = await h.text_reply(ANN, ANN, "thanks!", reply_to=help_message["message_id"])
            assert chat["text"].startswith("Send me a photo")
            with h.sessions() as session:
                user = repo.get_user(session, telegram_id=ANN)
                assert user is None or repo.count_samples(session, user_id=user.id) == 0

    asyncio.run(scenario())


def test_quick_taps_leave_the_message_showing_what_is_stored(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            reply = await h.photo_reply(ANN, ANN, digits_photo("0"))
            rid, mid = _reading_id(reply), reply["message_id"]
            tap = h.services.tap

            async def slow_first_tap(user: int, language: str | None, action: Any, shown: Any, update_id: int) -> Any:
                tapped = await tap(user, language, action, shown, update_id)
                if action.digit == 1:  # stored, but slow to come back: the second tap overtakes it
                    await asyncio.sleep(0.5)
                return tapped

            h.services.tap = slow_first_tap  # type: ignore[method-assign,assignment]
            first = await h.users.press_button(ANN, ANN, mid, f"d:{rid}:0:1")
            await asyncio.sleep(0.1)
            second = await h.users.press_button(ANN, ANN, mid, f"d:{rid}:0:2")
            for query in (first, second):
                while not (await h.users.callback_answer(query)).get("answered"):
                    await asyncio.sleep(0.02)
            assert _labels(h, ANN, rid) == [2]
            assert "Recorded: 2" in (await h.message(ANN, mid))["text"]

    asyncio.run(scenario())
