"""The fine-tune outbox: every outcome (promoted or kept) is told to the user once (issue 12)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage.repository import jobs as job_repo
from tests.worker.conftest import fake_trainer, job_rows
from tests.worker.test_jobs import queue_job, run
from worker.config import WorkerConfig
from worker.notices import summary_of
from worker.scheduler import Sweeper


def test_promotions_and_rejections_are_each_told_once_and_retried_when_telling_fails(
        config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    run(config, factory, queue_job(config, factory, 21))
    run(config, factory, queue_job(config, factory, 22),
        trainer=fake_trainer(promote=False, reason="rejected: not better on your digits"))
    told: list[tuple[int, dict[str, Any]]] = []
    failing = {"on": True}

    def notify(telegram_id: int, summary: dict[str, Any]) -> None:
        if failing["on"] and not summary["promoted"]:
            raise RuntimeError("telegram down")
        told.append((telegram_id, summary))

    sweeper = Sweeper(config, session_factory=factory, dispatch=lambda ids: [], notify=notify)
    sweeper.deliver_notifications()
    assert [t for t, _ in told] == [21]  # the rejection's notice failed: back in the outbox
    assert [j.outcome for j in job_rows(factory, 22)] == [job_repo.REJECTED_OUTCOME]
    failing["on"] = False
    sweeper.deliver_notifications()
    sweeper.deliver_notifications()  # nothing left: each outcome told once
    assert [t for t, _ in told] == [21, 22]
    promoted, kept = (s for _, s in told)
    assert promoted["promoted"] and promoted["version"] == 1 and promoted["accuracy_after"] == 0.9
    assert not kept["promoted"] and kept["trained"] and kept["heldout_samples"] == 12 and kept["labels"] == 12
    assert kept["accuracy_before"] == 0.5 and kept["accuracy_after"] == 0.4 and kept["cross_validated"]
    assert [j.outcome for j in job_rows(factory, 21)] == [job_repo.NOTIFIED_OUTCOME]
    assert [j.outcome for j in job_rows(factory, 22)] == [job_repo.REJECTED_NOTIFIED_OUTCOME]


def test_the_summary_reads_the_typed_metrics_and_rows_of_the_old_code() -> None:
    new = summary_of({"n_labels": 60, "n_holdout": 60, "folds": 5, "heldout_before": 0.7,
                              "heldout_after": 0.9, "heldout_personal": 0.85, "mnist_accuracy": 0.991, "version": 4})
    assert new["combined_accuracy"] == 0.9 == new["accuracy_after"]  # was read from a key nothing wrote
    assert new["personal_accuracy"] == 0.85 and new["version"] == 4 and new["heldout_samples"] == 60
    old = summary_of({"n_labels": 60.0, "n_holdout": 12.0, "heldout_before": 0.667,
                              "heldout_after": 0.833, "version": 2}, promoted=False)
    assert old["labels"] == 60 and old["heldout_samples"] == 12 and not old["cross_validated"]
    assert not old["promoted"] and old["trained"]
    untrained = summary_of({"n_labels": 3.0, "reason": "too few labelled samples (3 < 5)"}, promoted=False)
    assert not untrained["trained"] and untrained["accuracy_after"] is None
