"""Bad input, each case through the real Application and the emulator: a clear answer in the user's
language, and nothing stored wrongly. One live bot serves the whole module (see support.LiveBot)."""
# mypy: disable-error-code="index"

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from bot.handlers.photo import problem_text
from bot.i18n import resolve_language, translator
from core.recognize import Recognizer
from storage import repository as repo
from storage.records import TRUE_TEXT_MAX
from tests.bot.support import BotHarness, digits_photo
from tests.reliability.support import (
    LiveBot,
    blank_page,
    buttons,
    current_labels,
    deliver_twice,
    digit_png,
    expected,
    forged_press,
    gif_bytes,
    new_user_id,
    padded_png,
    png_bomb,
    png_bytes,
    press_twice,
    reading_id_of,
    stored_readings,
    wait_answer,
)

EN, ZH = "en", "zh-hans"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, recognizer: Recognizer) -> Iterator[LiveBot]:
    bot = LiveBot(tmp_path_factory.mktemp("bad-input"), recognizer)
    yield bot
    bot.close()


async def _user(h: BotHarness, language: str) -> int:
    user = new_user_id()
    await h.users.set_user(user, first_name="Test", language_code=language)
    return user


def _problem(status: str, language: str) -> str:
    text = problem_text(status, translator(resolve_language(language)), limit=0)
    if language == ZH:  # the catalogue really has it: not the English fallback
        assert text != problem_text(status, translator("en"), limit=0)
    return text


def _photo_case(live: LiveBot, data: bytes, language: str, *, as_document: bool = True,
                file_name: str = "upload.bin", mime_type: str | None = None,
                keep_original: bool = False) -> tuple[int, dict[str, Any]]:
    async def scenario() -> tuple[int, dict[str, Any]]:
        h = live.h
        user = await _user(h, language)
        sent = await h.users.send_photo(user, user, data, as_document=as_document, file_name=file_name,
                                        mime_type=mime_type, keep_original=keep_original)
        return user, await h.users.wait_for_reply(user, sent, timeout=30)
    return live.run(scenario())


def _rejected(live: LiveBot, data: bytes, status: str, language: str, **kwargs: Any) -> None:
    user, reply = _photo_case(live, data, language, **kwargs)
    assert reply["text"] == _problem(status, language)
    assert "reply_markup" not in reply
    assert stored_readings(live.h, user) == 0


def _read(live: LiveBot, data: bytes, language: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    user, reply = _photo_case(live, data, language, **kwargs)
    assert buttons(reply)[0] == f"c:{reading_id_of(reply)}", reply["text"]
    assert stored_readings(live.h, user) == _digit_count(reply)
    return user, reply


def _digit_count(reply: dict[str, Any]) -> int:
    data = buttons(reply)
    return 1 if len(data) >= 11 and data[1].startswith("d:") else sum(d.startswith("p:") for d in data)


# -- broken and hostile files ---------------------------------------------------------------------
def test_corrupt_jpeg(live: LiveBot) -> None:
    jpeg = digits_photo("42")
    scrambled = jpeg[:300] + bytes(reversed(jpeg[300:2000])) + jpeg[2000:]
    _rejected(live, scrambled, "not_an_image", EN, file_name="scan.jpg", mime_type="image/jpeg")


def test_truncated_jpeg(live: LiveBot) -> None:
    jpeg = digits_photo("42")
    _rejected(live, jpeg[: len(jpeg) // 2], "not_an_image", ZH, file_name="half.jpg", mime_type="image/jpeg")


def test_corrupt_png(live: LiveBot) -> None:
    png = digit_png("5")
    _rejected(live, png[:100] + b"\x00" * 500 + png[600:], "not_an_image", EN, file_name="x.png",
              mime_type="image/png")


def test_truncated_png(live: LiveBot) -> None:
    png = digit_png("5")
    _rejected(live, png[: len(png) // 2], "not_an_image", ZH, file_name="half.png", mime_type="image/png")


def test_empty_file(live: LiveBot) -> None:
    _rejected(live, b"", "not_an_image", EN, file_name="empty.png", mime_type="image/png")


def test_text_file_claiming_to_be_an_image(live: LiveBot) -> None:
    _rejected(live, b"just text, not pixels\n" * 50, "not_an_image", ZH, file_name="digits.jpg",
              mime_type="image/jpeg")


def test_decompression_bomb(live: LiveBot) -> None:
    bomb = png_bomb(30_000)
    assert len(bomb) < 200_000  # tiny file, 900 megapixels
    started = time.monotonic()
    _rejected(live, bomb, "too_large", EN, file_name="bomb.png", mime_type="image/png")
    assert time.monotonic() - started < 10  # refused from the header, never decoded


def test_19_mb_document_is_read(live: LiveBot) -> None:
    big = padded_png(digit_png("3"), 19 * MB)
    assert 19 * MB - 16 <= len(big) <= 19 * MB
    _read(live, big, ZH, file_name="big.png", mime_type="image/png")


def test_21_mb_document_is_refused(live: LiveBot) -> None:
    _rejected(live, padded_png(digit_png("3"), 21 * MB), "too_large", EN, file_name="huge.png",
              mime_type="image/png")


def test_21_mb_document_with_a_wrong_declared_size_is_refused_by_get_file(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        stored = h.server.state.files.add(padded_png(digit_png("3"), 21 * MB), folder="documents",
                                          mime_type="image/png")
        document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "mime_type": "image/png",
                    "file_name": "small.png", "file_size": 1000}  # the size it claims, not what getFile finds
        message = h.server.state.user_message(user, user, {"document": document})
        reply = await h.users.wait_for_reply(user, message["message_id"], timeout=30)
        assert reply["text"] == _problem("too_large", ZH)
        assert stored_readings(h, user) == 0
    live.run(scenario())


def test_21_mb_photo_is_read_from_a_smaller_size(live: LiveBot) -> None:
    # Telegram keeps downscaled sizes of a photo; the bot takes the largest one it may download.
    _read(live, padded_png(digit_png("3"), 21 * MB), EN, as_document=False, keep_original=True)


# -- other formats and media ----------------------------------------------------------------------
def _gray(png: bytes) -> np.ndarray:
    gray = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray is not None
    return np.asarray(gray)


def test_static_gif_document_is_read(live: LiveBot) -> None:
    _read(live, gif_bytes([_gray(digit_png("6"))]), EN, file_name="six.gif", mime_type="image/gif")


def test_animated_gif_is_refused(live: LiveBot) -> None:
    # Telegram delivers GIFs as an animation (with a document alongside).
    animation = {"file_id": "ANIM1", "file_unique_id": "UANIM1", "width": 320, "height": 240, "duration": 2,
                 "mime_type": "video/mp4", "file_name": "digits.gif.mp4"}
    _media(live, {"animation": animation, "document": {k: animation[k] for k in
                                                         ("file_id", "file_unique_id", "mime_type", "file_name")}},
           ZH)


def test_svg_document_is_refused(live: LiveBot) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><text y="50">7</text></svg>'
    _rejected(live, svg, "not_an_image", EN, file_name="seven.svg", mime_type="image/svg+xml")


def test_pdf_document_is_refused(live: LiveBot) -> None:
    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    _rejected(live, pdf, "not_an_image", ZH, file_name="scan.pdf", mime_type="application/pdf")


def _media(live: LiveBot, content: dict[str, Any], language: str) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, language)
        message = h.server.state.user_message(user, user, content)
        reply = await h.users.wait_for_reply(user, message["message_id"], timeout=20)
        assert reply["text"] == _problem("not_an_image", language)
        assert stored_readings(h, user) == 0
    live.run(scenario())


def test_video_is_refused(live: LiveBot) -> None:
    _media(live, {"video": {"file_id": "VID1", "file_unique_id": "UVID1", "width": 640, "height": 480,
                            "duration": 3, "mime_type": "video/mp4"}}, EN)


def test_sticker_is_refused(live: LiveBot) -> None:
    _media(live, {"sticker": {"file_id": "STK1", "file_unique_id": "USTK1", "width": 512, "height": 512,
                              "is_animated": False, "is_video": False, "type": "regular", "emoji": "7️⃣"}}, ZH)


def test_voice_is_refused(live: LiveBot) -> None:
    _media(live, {"voice": {"file_id": "VOX1", "file_unique_id": "UVOX1", "duration": 2,
                            "mime_type": "audio/ogg"}}, EN)


# -- odd sizes and contents -----------------------------------------------------------------------
def test_one_pixel_image(live: LiveBot) -> None:
    _rejected(live, png_bytes(np.full((1, 1), 255, np.uint8)), "no_digit", ZH, file_name="dot.png",
              mime_type="image/png")


def test_10000_by_100_image(live: LiveBot) -> None:
    strip = png_bytes(np.full((100, 10_000), 235, np.uint8))
    _rejected(live, strip, "no_digit", EN, as_document=False)


def test_blank_page(live: LiveBot) -> None:
    _rejected(live, blank_page(), "no_digit", ZH, as_document=False)


def test_photo_with_no_digits(live: LiveBot) -> None:
    """A wall: soft shadows and texture, nothing written."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:720, 0:960]
    wall = 170 + 40 * np.sin(xx / 300.0) + 20 * np.cos(yy / 200.0) + rng.normal(0, 3, (720, 960))
    photo = cv2.imencode(".jpg", cv2.GaussianBlur(np.clip(wall, 0, 255).astype(np.uint8), (5, 5), 0))[1]
    _rejected(live, photo.tobytes(), "no_digit", EN, as_document=False)


def test_photo_with_30_digits(live: LiveBot) -> None:
    _rejected(live, digits_photo("0123456789" * 3), "too_many_digits", ZH, as_document=False)


# -- corrections ----------------------------------------------------------------------------------
def test_correction_that_is_not_digits(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        reply = await h.photo_reply(user, user, digits_photo("42"))
        rid = reading_id_of(reply)
        answer = await h.text_reply(user, user, "forty-two", reply_to=reply["message_id"])
        with h.sessions() as session:
            view = repo.get_reading(session, telegram_id=user, reading_id=rid)
            assert view is not None
        # The example is the reading itself, or a generic one while the reply is not yet attached to it.
        assert answer["text"] in [expected(ZH, "Please reply with digits only, e.g. {example}.", example=example)
                                  for example in (view.text, "4271")]
        assert current_labels(h, user, rid) == [None] * _digit_count(reply)
    live.run(scenario())


def test_correction_with_another_number_of_digits_is_kept_whole(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        reply = await h.photo_reply(user, user, digits_photo("42"))
        count, rid = _digit_count(reply), reading_id_of(reply)
        answer = await h.text_reply(user, user, "1" * (count + 3), reply_to=reply["message_id"])
        with h.sessions() as session:
            view = repo.get_reading(session, telegram_id=user, reading_id=rid)
            assert view is not None
        assert answer["text"] == expected(ZH, "Recorded: {digits} (I had read {said}; I'll keep your whole answer)",
                                          digits="1" * (count + 3), said=view.text)
        assert view.true_text == "1" * (count + 3)
        assert current_labels(h, user, rid) == [None] * count  # no digit is labelled from it
    live.run(scenario())


def test_reply_to_a_bot_message_that_is_not_a_prediction(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        help_message = await h.command_reply(user, user, "help")
        answer = await h.text_reply(user, user, "4271", reply_to=help_message["message_id"])
        assert answer["text"] == expected(ZH, "That message isn't one of my answers to a photo. To correct me, "
                                              "reply to my answer with the right digits.")
        assert stored_readings(h, user) == 0
    live.run(scenario())


def test_reply_to_own_message_with_digits(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, EN)
        mine = await h.users.send_text(user, user, "hello")
        await h.users.wait_for_bot_message(user, after=mine)
        answer = await h.text_reply(user, user, "4271", reply_to=mine)
        assert answer["text"] == expected(EN, "To correct me, reply to my answer to your photo with the right "
                                              "digits.")
    live.run(scenario())


def test_stale_button_after_forget(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        reply = await h.photo_reply(user, user, digits_photo("5"))
        rid = reading_id_of(reply)
        ask = await h.command_reply(user, user, "forget")
        await h.press(user, user, ask["message_id"], f"f:yes:{user}")
        answer = await h.press(user, user, reply["message_id"], buttons(reply)[1])
        assert answer["text"] == expected(ZH, "I no longer have this photo (maybe after /forget). Please send "
                                              "it again.") and answer["show_alert"]
        with h.sessions() as session:
            assert repo.get_user(session, telegram_id=user) is None  # the press stored nothing
            assert repo.get_reading(session, telegram_id=user, reading_id=rid) is None
    live.run(scenario())


def test_forged_callback_naming_another_users_sample(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        ann, eve = await _user(h, EN), await _user(h, ZH)
        ann_reply = await h.photo_reply(ann, ann, digits_photo("7"))
        ann_rid = reading_id_of(ann_reply)
        eve_reply = await h.photo_reply(eve, eve, digits_photo("1"))
        for data in (f"d:{ann_rid}:0:3", f"c:{ann_rid}", f"u:{ann_rid}"):
            query = forged_press(h.server.state, eve, eve, eve_reply["message_id"], data)
            answer = await wait_answer(h, query)
            assert answer["show_alert"]
            assert answer["text"] in (
                expected(ZH, "Only the person who sent the photo can correct this."),
                expected(ZH, "This button doesn't work any more. Please send the photo again."))
        assert current_labels(h, ann, ann_rid) == [None]
        # Malformed or unknown readings: a polite "dead button", nothing stored.
        for data in ("d:999999999:0:1", "d:1:0:10", "zz" * 32, f"f:yes:{ann}"):
            query = forged_press(h.server.state, eve, eve, eve_reply["message_id"], data)
            answer = await wait_answer(h, query)
            assert answer["show_alert"] and answer["text"]
        with h.sessions() as session:
            assert repo.get_user(session, telegram_id=ann) is not None  # eve could not /forget ann
        assert stored_readings(h, ann) == 1
    live.run(scenario())


def test_group_member_pressing_your_buttons(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        ann, bob = await _user(h, EN), await _user(h, ZH)
        group = -new_user_id()
        await h.users.create_group(group, [ann, bob], title="Class")
        await h.command_reply(ann, ann, "start")  # started in private: her group photos are read
        reply = await h.photo_reply(ann, group, digits_photo("8"))
        rid = reading_id_of(reply)
        answer = await h.press(bob, group, reply["message_id"], f"d:{rid}:0:2")
        assert answer["text"] == expected(ZH, "Only the person who sent the photo can correct this.")
        sent = await h.users.send_text(bob, group, "2", reply_to=reply["message_id"])
        refusal = await h.users.wait_for_reply(group, sent, timeout=20)
        assert refusal["text"] == expected(ZH, "Only the person who sent the photo can correct this.")
        assert current_labels(h, ann, rid) == [None]
        assert stored_readings(h, bob) == 0
        mine = await h.press(ann, group, reply["message_id"], f"d:{rid}:0:2")  # the owner still can
        assert mine["text"] == expected(EN, "Recorded: {digits}", digits="2")
        assert current_labels(h, ann, rid) == [2]
    live.run(scenario())


# -- redelivery, floods, commands, text -------------------------------------------------------------
def test_same_photo_update_delivered_twice(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, EN)
        sizes = h.server.state.files.add_photo(digits_photo("3"))
        mid = deliver_twice(h.server.state, user, user, {"photo": sizes})
        await h.users.wait_for_reply(user, mid, timeout=20)
        await asyncio.sleep(1.0)  # the second delivery has had time to be (not) answered
        replies = [m for m in await h.users.messages(user)
                   if m.get("reply_to_message", {}).get("message_id") == mid]
        assert len(replies) == 1
        assert stored_readings(h, user) == _digit_count(replies[0])
    live.run(scenario())


def test_same_button_press_delivered_twice(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        reply = await h.photo_reply(user, user, digits_photo("9"))
        rid = reading_id_of(reply)
        query = press_twice(h.server.state, user, user, reply["message_id"], f"d:{rid}:0:4")
        await wait_answer(h, query)
        await asyncio.sleep(1.0)
        assert current_labels(h, user, rid) == [4]
        with h.sessions() as session:
            history = repo.user_stats(session, telegram_id=user)
        assert history.labelled == 1
    live.run(scenario())


def test_flood_of_50_photos_in_10_seconds(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user, other = await _user(h, EN), await _user(h, EN)
        photo = digits_photo("1", height=120)
        sent: list[int] = []
        started = time.monotonic()
        for _ in range(50):
            sent.append(await h.users.send_photo(user, user, photo))
            await asyncio.sleep(0.15)  # 50 photos in ~8 s
        assert time.monotonic() - started < 10
        # Someone else is not starved by the flood.
        other_sent = await h.users.send_photo(other, other, photo)
        other_reply = await h.users.wait_for_reply(other, other_sent, timeout=30)
        assert buttons(other_reply)
        for mid in sent:  # nothing lost: every photo gets its reading
            reply = await h.users.wait_for_reply(user, mid, timeout=60)
            assert buttons(reply), reply["text"]
        assert stored_readings(h, user) == 50
        notices = [m for m in await h.users.messages(user) if m["from"]["is_bot"] and not m.get("reply_markup")]
        assert len(notices) >= 1 and all("faster" in m["text"] for m in notices)
        assert len(notices) <= 3  # told, not spammed
    live.run(scenario(), timeout=180)


def test_unknown_command(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, ZH)
        for command in ("frobnicate", "start@someone_else_bot", "x" * 64):
            answer = await h.command_reply(user, user, command)
            assert answer["text"] in (expected(ZH, "I don't know that command. /help lists what I can do."),), command
        assert stored_readings(h, user) == 0
    live.run(scenario())


def test_extremely_long_text(live: LiveBot) -> None:
    async def scenario() -> None:
        h = live.h
        user = await _user(h, EN)
        answer = await h.text_reply(user, user, "ж" * 4096)
        assert answer["text"] == expected(EN, "Send me a photo of handwritten digits and I'll read them. /help "
                                              "explains more.")
        reply = await h.photo_reply(user, user, digits_photo("4"))
        long_digits = await h.text_reply(user, user, "7" * 4096, reply_to=reply["message_id"])
        assert long_digits["text"] == expected(EN, "That is too long for one photo; please reply with at most "
                                                   "{count} digits.", count=TRUE_TEXT_MAX)
        assert current_labels(h, user, reading_id_of(reply)) == [None] * _digit_count(reply)
    live.run(scenario())
