"""The in-memory cache of personal models (bot/personal_cache.py) and /forget emptying it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from bot.personal_cache import PersonalModelCache
from core.model.network import FROZEN_PREFIXES, Checkpoint
from core.recognize import Recognizer
from storage import repository as repo
from tests.bot.support import BotHarness, digits_photo, running_bot

ANN, BOB = 42, 43


def test_lru_keeps_one_model_per_user_and_the_most_recent_users() -> None:
    cache: PersonalModelCache[str] = PersonalModelCache(size=2)
    g = cache.generation()
    assert cache.put(1, (10, 1, "aa"), "ann v1", generation=g)
    assert cache.put(1, (11, 2, "bb"), "ann v2", generation=g)  # the user's older version goes
    assert cache.get(1, (10, 1, "aa")) is None and cache.get(1, (11, 2, "bb")) == "ann v2"
    cache.put(2, (12, 1, "cc"), "bob", generation=g)
    assert cache.get(1, (11, 2, "bb")) == "ann v2"  # ann used last: carol evicts bob
    cache.put(3, (13, 1, "dd"), "carol", generation=g)
    assert cache.users() == {1, 3} and len(cache) == 2


def test_same_row_id_with_other_weights_is_a_miss() -> None:
    cache: PersonalModelCache[str] = PersonalModelCache()
    cache.put(1, (10, 1, "aa"), "ann", generation=cache.generation())
    assert cache.get(2, (10, 1, "aa")) is None  # another user
    assert cache.get(1, (10, 1, "ff")) is None  # same row id, other weights


def test_drop_user_removes_entries_and_blocks_a_load_in_flight() -> None:
    cache: PersonalModelCache[str] = PersonalModelCache()
    before = cache.generation()
    cache.put(1, (10, 1, "aa"), "ann", generation=before)
    cache.put(2, (11, 1, "bb"), "bob", generation=before)
    loading = cache.generation()  # ann's photo starts loading her model...
    assert cache.drop_user(1) == 1  # ...while /forget runs
    assert not cache.put(1, (10, 1, "aa"), "ann", generation=loading)  # the late load is not kept
    assert cache.users() == {2}
    assert cache.put(1, (20, 1, "cc"), "ann again", generation=cache.generation())  # a new model later
    assert cache.discard_user(1) == 1 and cache.users() == {2}


# -- through the bot -------------------------------------------------------------------------------
def _personal(recognizer: Recognizer, favour: int) -> bytes:
    """A personal model that always answers ``favour`` (threshold 0: its answer is always used)."""
    head = {k: v.clone() for k, v in recognizer.base.state_dict.items() if not k.startswith(FROZEN_PREFIXES)}
    head["fc2.bias"] = torch.full((10,), -50.0)
    head["fc2.bias"][favour] = 50.0
    return Checkpoint(state_dict=head, meta={"kind": "personal", "temperature": 1.0, "threshold": 0.0}).to_bytes()


def _install(h: BotHarness, telegram_id: int, weights: bytes) -> int:
    with h.sessions.begin() as session:
        user = repo.get_or_create_user(session, telegram_id=telegram_id, language="en")
        version = repo.add_model_version(session, user_id=user.id, parent_id=None, weights=weights, metrics={})
        repo.promote_model_version(session, user_id=user.id, version_id=version.id)
        return version.id


async def _answer(h: BotHarness, telegram_id: int) -> list[tuple[int, str]]:
    """(digit, source) of each digit the bot read in a fresh photo of "6"."""
    reply = await h.photo_reply(telegram_id, telegram_id, digits_photo("6"))
    reading = int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    with h.sessions() as session:
        view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading)
    assert view is not None
    return [(d.digit, d.source) for d in view.digits]


def test_forget_drops_the_cached_personal_model(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            cache = h.services.personal_models
            ann_version = _install(h, ANN, _personal(recognizer, favour=3))
            assert await _answer(h, ANN) == [(3, "personal")]
            assert cache.users() == {ANN}

            asked = await h.command_reply(ANN, ANN, "forget")
            await h.press(ANN, ANN, asked["message_id"], f"f:yes:{ANN}")
            assert cache.users() == set() and len(cache) == 0  # nothing of Ann's stays in memory

            answer = await _answer(h, ANN)  # the base model answers her next photo
            assert [source for _, source in answer] == ["base"]
            assert cache.users() == set()

            # Bob's new model row gets the id Ann's had (SQLite reuses the highest row id): he is
            # answered by his own model, never by Ann's.
            bob_version = _install(h, BOB, _personal(recognizer, favour=8))
            assert bob_version == ann_version
            assert await _answer(h, BOB) == [(8, "personal")]
            assert cache.users() == {BOB}

    asyncio.run(scenario())
