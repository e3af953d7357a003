"""/train answers with the fine-tune's outcome (also "not better, kept your model" and failures),
and /stats shows the last fine-tune (issue 14)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.handlers import commands
from bot.handlers.commands import finetune_outcome_text
from bot.handlers.stats import last_finetune_text, outcome_text
from bot.i18n import resolve_language, translator
from core.recognize import Recognizer
from storage import repository as repo
from storage.records import FinetuneStatus
from tests.bot.support import migrated_sessions, running_bot

ANN = 42
WHEN = datetime(2026, 5, 4, 3, 2, tzinfo=UTC)


@dataclass(frozen=True)
class _Request:
    accepted: bool
    reason: str
    job_id: int | None = None
    labels: int = 0
    needed: int = 0


def _status(state: str, outcome: str | None, **more: object) -> FinetuneStatus:
    return FinetuneStatus(7, state, outcome, WHEN, WHEN if state in ("succeeded", "failed") else None,
                          **more)  # type: ignore[arg-type]


def test_outcome_texts_in_english_and_chinese() -> None:
    en, zh = translator("en"), translator(resolve_language("zh-hans"))
    rejected = _status("succeeded", "rejected", version=3, accuracy_before=0.9, accuracy_after=0.85,
                       active_version=2)
    assert finetune_outcome_text(rejected, en) == ("Fine-tune finished: the new model was not better (85% in a "
                                                   "cross-check on your digits, 90% before), so I kept your personal "
                                                   "model v2.")
    assert finetune_outcome_text(_status("succeeded", "rejected"), en) == (
        "Fine-tune finished: the new model was not better, so I kept the base model.")
    assert finetune_outcome_text(rejected, zh).startswith("训练完成：新模型没有更好")
    assert "你的个人模型 v2" in finetune_outcome_text(rejected, zh)
    assert last_finetune_text(rejected, en) == ("Last fine-tune (2026-05-04 03:02 UTC): v3 was not better (85% in a "
                                                "cross-check on your digits, 90% before), so I kept your personal "
                                                "model v2.")
    promoted = _status("succeeded", "promoted+notified", version=3, accuracy_before=0.8, accuracy_after=0.95)
    assert last_finetune_text(promoted, en) == ("Last fine-tune (2026-05-04 03:02 UTC): v3 went live (95% in a "
                                                "cross-check on your digits, 80% before).")
    assert last_finetune_text(_status("failed", None), en).endswith("failed; your model did not change.")
    assert last_finetune_text(_status("queued", None), en) == (
        "Last fine-tune: asked 2026-05-04 03:02 UTC, waiting to run.")
    assert last_finetune_text(_status("running", None), zh) == "上次训练：2026-05-04 03:02 UTC 提交，正在训练。"
    assert last_finetune_text(_status("failed", None), zh) == (
        "上次训练（2026-05-04 03:02 UTC）：失败；你的模型没有变化。")


def test_every_fine_tune_outcome_has_a_message_in_english_and_chinese() -> None:
    en, zh = translator("en"), translator(resolve_language("zh-hans"))
    kept = {"promoted": False, "trained": True, "version": 4, "labels": 60, "heldout_samples": 40,
            "accuracy_before": 0.9, "accuracy_after": 0.875}
    assert outcome_text(kept, en) == (
        "I kept your current model: the new one was not better on your 40 digits (88% vs 90% now, each digit "
        "read by a model trained without it). Your corrections still count: I use them right away, and the next "
        "fine-tune learns from them.")
    assert outcome_text(kept, zh).startswith("我保留了你当前的模型：新模型在你的 40 个数字上并没有更好")
    untrained = {"promoted": False, "trained": False, "labels": 3}
    assert "3 labelled digits are not enough" in outcome_text(untrained, en)
    assert outcome_text(untrained, zh).startswith("我保留了你当前的模型：3 个已标注的数字")
    promoted = dict(kept, promoted=True, accuracy_after=0.95, mnist_accuracy=0.991)
    assert outcome_text(promoted, en).startswith("🎉 Your personal model v4 is live!") and "95%" in outcome_text(
        promoted, en)
    assert outcome_text(promoted, zh).startswith(
        "🎉 你的个人模型 v4 已启用！在对你的数字的交叉检验中，它的正确率是 95%")
    old = {"version": 2, "labels": 40, "accuracy_before": 0.8, "accuracy_after": 0.95}  # queued before issue 12
    assert outcome_text(old, en).startswith("🎉 Your personal model v2 is live!")


@pytest.mark.parametrize("ending", ["rejected", "failed"])
def test_train_tells_the_user_how_the_fine_tune_ended(tmp_path: Path, recognizer: Recognizer,
                                                      monkeypatch: pytest.MonkeyPatch, ending: str) -> None:
    monkeypatch.setattr(commands, "TRAIN_WATCH_EVERY_S", 0.2)
    sessions = migrated_sessions(tmp_path)
    with sessions.begin() as session:
        user = repo.get_or_create_user(session, telegram_id=ANN)
        job = repo.create_finetune_job(session, user_id=user.id)
        assert job is not None
        job_id = job.id

    def request(telegram_id: int) -> _Request:
        return _Request(True, "queued", job_id, labels=12, needed=5)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, request_finetune=request, sessions=sessions) as h:
            reply = await h.command_reply(ANN, ANN, "train")
            assert reply["text"].startswith("Fine-tune requested") and "how it went" in reply["text"]
            stats = await h.command_reply(ANN, ANN, "stats")
            assert stats["text"].endswith("waiting to run.")
            with sessions.begin() as session:
                assert repo.claim_job(session, job_id=job_id) is not None
            await asyncio.sleep(0.6)  # still running: nothing told yet
            with sessions.begin() as session:
                if ending == "rejected":
                    repo.finish_job(session, job_id=job_id, outcome="rejected",
                                    metrics={"version": 1, "heldout_before": 0.9, "heldout_after": 0.8})
                else:
                    repo.fail_job(session, job_id=job_id, error="boom", retry=False)
            if ending == "rejected":
                # the worker's outbox tells every finished outcome once (issue 12), the watch does not
                await asyncio.sleep(0.8)
                assert h.application.job_queue is not None
                assert not h.application.job_queue.get_jobs_by_name(f"train-watch:{ANN}:{job_id}")
                summary = {"promoted": False, "trained": True, "version": 1, "labels": 12, "heldout_samples": 12,
                           "accuracy_before": 0.9, "accuracy_after": 0.8}
                h.services.notices.tell(ANN, summary)  # as worker.scheduler's outbox does
                told = await h.users.wait_for_bot_message(ANN, lambda m: "kept" in m.get("text", ""),
                                                          after=stats["message_id"], timeout=10)
                assert told["text"].startswith("I kept your current model: the new one was not better on your "
                                               "12 digits (80% vs 90% now")
            else:
                told = await h.users.wait_for_bot_message(ANN, lambda m: "ine-tune" in m.get("text", ""),
                                                          after=stats["message_id"], timeout=10)
                assert told["text"].startswith("The fine-tune you asked for failed")
            stats = await h.command_reply(ANN, ANN, "stats")
            last = stats["text"].splitlines()[-1]
            assert last.startswith("Last fine-tune (") and (
                "v1 was not better" in last if ending == "rejected" else "failed" in last)
            await asyncio.sleep(0.6)  # told once: the watch ended with the job
            assert h.application.job_queue is not None
            assert not h.application.job_queue.get_jobs_by_name(f"train-watch:{ANN}:{job_id}")

    asyncio.run(scenario())
