"""A real `digitbot worker --celery` (prefork pool, the project's Celery configuration) whose trainer
is a stand-in, for the fault tests in test_celery_faults.py.

Usage: python -m tests.worker.celery_child CONTROL_DIR [digitbot worker options...]

The stand-in (run in the pool process, like the real trainer) writes CONTROL_DIR/training-<pid>
when a job starts training, then takes real optimiser steps (so the lease heartbeat sees progress)
for as long as CONTROL_DIR/hold exists, then returns a real (random) personal checkpoint that the
gate promotes (tests.worker.conftest.fake_trainer). Everything else is the production code: the
claim, the lease, the fencing, storing and promoting the model, acks and re-deliveries.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import core.personal.finetune
from core.model.network import DigitNet
from digitbot.cli import main as digitbot_main
from tests.worker.conftest import fake_trainer


def held_trainer(control: Path) -> Any:
    promote = fake_trainer(promote=True)

    def train(base: Any, images: Any, labels: Any, **kwargs: Any) -> Any:
        (control / f"training-{os.getpid()}").write_text(str(len(labels)))
        model = DigitNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        while (control / "hold").exists():
            loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(0.05)
        return promote(base, images, labels, **kwargs)
    return train


def main() -> int:
    control = Path(sys.argv[1])
    core.personal.finetune.finetune_user = held_trainer(control)  # worker.jobs imports it at call time
    torch.set_num_threads(1)
    return digitbot_main(["worker", "--celery", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
