"""Child process for the worker-kill test: runs one job whose "training" runs until it is killed.

Usage: python -m tests.worker.kill_child DATABASE_URL JOB_ID MARKER_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from core.model.network import Checkpoint, DigitNet
from digitbot.settings import Settings
from digitbot.wiring import worker_config
from storage.db import init_db
from worker.jobs import run_job


def train_until_killed(marker: Path) -> Any:
    def trainer(*_: Any, **__: Any) -> Any:
        marker.write_text("training")
        model = DigitNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        while True:  # real optimiser steps, until SIGKILL
            loss = model(torch.randn(8, 1, 28, 28)).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(0.05)
    return trainer


def main() -> None:
    url, job_id, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    config = worker_config(Settings(database_url=url, finetune_lease_s=1.0, celery_broker_url=None))
    run_job(job_id, config=config, worker_id="doomed", session_factory=init_db(url, upgrade=False),
            base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
            trainer=train_until_killed(marker))


if __name__ == "__main__":
    main()
