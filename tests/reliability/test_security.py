"""Security: the token never reaches a log line or a user, admin commands are allow-listed, a per-user
quota holds, /forget leaves nothing (rows, weight files), nothing builds SQL or paths from user
input, and weights load without running pickled code."""
# mypy: disable-error-code="index"

from __future__ import annotations

import ast
import asyncio
import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from bot.handlers.admin import ADMIN_IDS_KEY
from bot.handlers.errors import REDACTED, RedactTokenFilter, install_redaction
from core.model.network import Checkpoint, DigitNet
from core.recognize import PersonalModel, Recognizer
from digitbot.settings import PROJECT_ROOT, Settings
from emulator import DEFAULT_TOKEN
from storage import repository as repo
from storage.db import session_factory, upgrade_to_head
from storage.repository.users import count_user_rows
from tests.bot.support import digits_photo, running_bot
from tests.reliability.support import buttons, expected, new_user_id, reading_id_of, stored_readings

SHAPED_TOKEN = "123456789:AAHfakeFAKEfakeFAKEfakeFAKEfake_x-12"


@pytest.fixture
def captured_logs() -> Any:
    """Everything logged while the test runs, through a root handler (as `digitbot run` logs)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler, stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_token_never_in_logs_or_error_replies(tmp_path: Path, recognizer: Recognizer, captured_logs: Any) -> None:
    handler, stream = captured_logs

    # `digitbot run` order: redaction first, then storage start-up (which runs the migrations).
    install_redaction(DEFAULT_TOKEN)

    async def scenario() -> str:
        async with running_bot(tmp_path, recognizer) as h:
            token = h.server.token
            assert token == DEFAULT_TOKEN
            assert any(isinstance(f, RedactTokenFilter) for f in handler.filters), "logging was reconfigured"
            logging.getLogger("httpx").setLevel(logging.DEBUG)  # request URLs carry the token
            user = new_user_id()
            await h.users.set_user(user, language_code="en")
            await h.photo_reply(user, user, digits_photo("4"))  # getFile + file download URLs

            async def leaky_failure(**_: Any) -> Any:
                raise RuntimeError(f"GET {h.server.file_api_url}{token}/photos/x.jpg failed; also {SHAPED_TOKEN}")
            h.services.read_photo = leaky_failure  # type: ignore[method-assign]
            sent = await h.users.send_photo(user, user, digits_photo("5"))
            sorry = await h.users.wait_for_bot_message(user, after=sent, timeout=20)
            assert sorry["text"] == expected("en", "Sorry, something went wrong. Please try again.")
            for message in await h.users.messages(user):
                assert token not in message.get("text", "") and SHAPED_TOKEN not in message.get("text", "")
            return token

    token = asyncio.run(scenario())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    text = stream.getvalue()
    assert "RuntimeError" in text and REDACTED in text  # the failure was logged, with its traceback
    assert token not in text and SHAPED_TOKEN not in text
    assert token.split(":")[1] not in text


def _status_lines(text: str) -> dict[str, str]:
    return {line.split(" ")[0]: line for line in text.splitlines()}


def test_admin_command_only_for_the_allow_list(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            admin, stranger = new_user_id(), new_user_id()
            h.application.bot_data[ADMIN_IDS_KEY] = frozenset({admin})
            await h.users.set_user(admin, language_code="en")
            await h.users.set_user(stranger, language_code="zh-hans")
            await h.photo_reply(stranger, stranger, digits_photo("42"))
            unknown = expected("zh-hans", "I don't know that command. /help lists what I can do.")
            for args in ("", "status"):
                refused = await h.command_reply(stranger, stranger, "admin", args)
                assert refused["text"] == unknown  # indistinguishable from a command that does not exist
            status = await h.command_reply(admin, admin, "admin", "status")
            assert status["text"].startswith("Service status:")
            assert "users 1," in status["text"] and "photos 1," in status["text"]
            usage = await h.command_reply(admin, admin, "admin", "drop-everything")
            assert usage["text"] == "Admin commands: /admin status"
            group = -new_user_id()
            await h.users.create_group(group, [admin, stranger])
            sent = await h.users.send_command(admin, group, "admin", "status")
            await asyncio.sleep(1.0)
            assert not [m for m in await h.users.messages(group) if m["message_id"] > sent]  # never in groups
    asyncio.run(scenario())


@pytest.mark.parametrize(("value", "ids"), [
    ("123", [123]), ("123,456", [123, 456]), (" 123 , 456 ", [123, 456]), ("[123, 456]", [123, 456]),
    ("", []), ("  ", []), ("[]", []),
])
def test_admin_ids_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, ids: list[int]) -> None:
    monkeypatch.setenv("DIGITBOT_ADMIN_IDS", value)
    assert Settings(_env_file=None).admin_ids == ids  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["abc", "123,x", "[123,"])
def test_admin_ids_that_are_not_numbers_stop_start_up(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DIGITBOT_ADMIN_IDS", value)
    with pytest.raises(ValidationError, match="admin_ids"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_per_user_storage_quota(tmp_path: Path, recognizer: Recognizer) -> None:
    url = f"sqlite:///{tmp_path / 'quota.db'}"
    upgrade_to_head(url)
    sessions = session_factory(url, max_samples_per_user=3)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            ann, bob = new_user_id(), new_user_id()
            for user in (ann, bob):
                await h.users.set_user(user, language_code="zh-hans")
            first = await h.photo_reply(ann, ann, digits_photo("42"))
            assert buttons(first)
            replies = [await h.photo_reply(ann, ann, digits_photo("42")) for _ in range(2)]
            assert all("reply_markup" not in r for r in replies[1:])
            assert replies[-1]["text"] == expected("zh-hans", "You have stored the maximum number of digits "
                                                              "({limit}). Use /forget to start over.", limit=3)
            assert stored_readings(h, ann) <= 3
            assert buttons(await h.photo_reply(bob, bob, digits_photo("7")))  # others are not affected
    asyncio.run(scenario())


def test_forget_removes_rows_and_weight_files(tmp_path: Path, recognizer: Recognizer) -> None:
    url = f"sqlite:///{tmp_path / 'forget.db'}"
    upgrade_to_head(url)
    weights_dir = tmp_path / "weights"
    sessions = session_factory(url, weights_dir=weights_dir)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            ann, bob = new_user_id(), new_user_id()
            for user in (ann, bob):
                await h.users.set_user(user, language_code="en")
                reply = await h.photo_reply(user, user, digits_photo("7"))
                await h.press(user, user, reply["message_id"], f"c:{reading_id_of(reply)}")
                with sessions.begin() as session:
                    owner = repo.get_user(session, telegram_id=user)
                    assert owner is not None
                    blob = Checkpoint(state_dict={"fc2.bias": torch.zeros(10)}).to_bytes()
                    first = repo.add_model_version(session, user_id=owner.id, parent_id=None, weights=blob,
                                                   metrics={})
                    repo.promote_model_version(session, user_id=owner.id, version_id=first.id)
                    second = repo.add_model_version(session, user_id=owner.id, parent_id=first.id,
                                                    weights=blob + b"", metrics={}, status="rejected")
                    assert second.id != first.id
                    repo.create_finetune_job(session, user_id=owner.id)
            with sessions() as session:
                ann_row = repo.get_user(session, telegram_id=ann)
                assert ann_row is not None
                ann_id = ann_row.id
            ann_files = list((weights_dir / str(ann_id)).glob("*.bin"))
            assert len(ann_files) == 2
            ask = await h.command_reply(ann, ann, "forget")
            await h.press(ann, ann, ask["message_id"], f"f:yes:{ann}")
            with sessions() as session:
                assert all(n == 0 for n in count_user_rows(session, user_id=ann_id).values())
                assert repo.get_user(session, telegram_id=bob) is not None
                bob_row = repo.get_user(session, telegram_id=bob)
                assert bob_row is not None and count_user_rows(session, user_id=bob_row.id)["samples"] == 1
            assert not any(path.exists() for path in ann_files)
            assert not (weights_dir / str(ann_id)).exists()
            assert list(weights_dir.rglob("*.bin"))  # bob's weights are still there
    asyncio.run(scenario())


def test_hostile_names_and_texts_build_no_paths_or_sql(tmp_path: Path, recognizer: Recognizer) -> None:
    url = f"sqlite:///{tmp_path / 'inject.db'}"
    upgrade_to_head(url)
    sessions = session_factory(url, weights_dir=tmp_path / "weights")
    outside = tmp_path / "pwned.png"

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            user = new_user_id()
            await h.users.set_user(user, language_code="en'; DROP TABLE users; --")
            name = "../" * 12 + str(outside).lstrip("/")
            reply = await h.photo_reply(user, user, digits_photo("3"), as_document=True, file_name=name,
                                        mime_type="image/png")
            assert buttons(reply)
            await h.command_reply(user, user, "lang", "'; DELETE FROM labels; --")
            await h.text_reply(user, user, "1; DROP TABLE samples", reply_to=reply["message_id"])
            await h.press(user, user, reply["message_id"], f"c:{reading_id_of(reply)}")
            with sessions() as session:
                stats = repo.user_stats(session, telegram_id=user)
                assert stats.samples == 1 and stats.labelled == 1
    asyncio.run(scenario())
    assert not outside.exists()
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").rglob("*"))


_SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "raw_connection"}
# Reviewed by hand: identifiers and values from literals in the code, never from input.
_ALLOWED = {("storage/db.py", "PRAGMA busy_timeout"),  # a module constant
            ("storage/migrations/versions/0002_labels_carry_their_prediction_for_stats.py",
             "UPDATE labels SET {name}")}  # column names and expressions from the migration's COPIED tuple


def _dynamic_sql(path: Path) -> list[str]:
    """Calls that pass an f-string, %-format, .format() or concatenation as SQL text."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in _SQL_CALLS:
            continue
        first = node.args[0]
        dynamic = isinstance(first, ast.JoinedStr | ast.BinOp) or (
            isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute) and first.func.attr == "format")
        if dynamic:
            source = ast.get_source_segment(path.read_text(), first) or ""
            relative = path.relative_to(PROJECT_ROOT).as_posix()
            if not any(relative == f and marker in source for f, marker in _ALLOWED):
                found.append(f"{relative}:{node.lineno}: {source[:80]}")
    return found


def test_no_sql_text_is_built_by_formatting() -> None:
    offenders = [hit for package in ("bot", "core", "storage", "worker", "digitbot")
                 for path in sorted((PROJECT_ROOT / package).rglob("*.py")) for hit in _dynamic_sql(path)]
    assert offenders == []


def test_weight_paths_come_from_ids_and_hashes_only() -> None:
    source = (PROJECT_ROOT / "storage" / "weights.py").read_text()
    assert 'relative = f"{user_id}/{sha256_hex(data)[:16]}-{uuid.uuid4().hex[:12]}.bin"' in source


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/digitbot-pwned-by-pickle",))


def test_weights_never_execute_pickled_code(tmp_path: Path) -> None:
    marker = Path("/tmp/digitbot-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": {"fc2.bias": torch.zeros(10)}, "meta": _Exploit()}, buffer)
    evil = buffer.getvalue()
    for load in (Checkpoint.from_bytes, PersonalModel.from_bytes):
        with pytest.raises(pickle.UnpicklingError):
            load(evil)
    assert not marker.exists()
    good = Checkpoint(state_dict=DigitNet().state_dict()).to_bytes()
    assert set(Checkpoint.from_bytes(good).state_dict) == set(DigitNet().state_dict())
    assert np.isfinite(float(Checkpoint.from_bytes(good).state_dict["fc2.bias"].sum()))
