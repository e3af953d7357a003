"""core.personal.batched_finetune / core.personal.batched_prep: k-fold material, chunks, and per-user results."""

from __future__ import annotations

import numpy as np
import torch

from core.personal.batched_finetune import UserSamples, finetune_users
from core.personal.batched_prep import prepare_batch
from core.personal.finetune import FinetuneConfig, fold_assignment
from tests.core.personal.test_finetune import TINY, pattern_digits, random_base, tiny_bank_and_probe


def test_each_fold_model_reads_exactly_the_samples_it_never_trains_on() -> None:
    base = random_base(seed=3)
    net = base.build().eval()
    users = [pattern_digits(n, seed=40 + n) for n in (12, 23)]
    config = FinetuneConfig(**{**TINY.__dict__, "folds": 4, "augment_copies": 2})
    material = prepare_batch(net, users, config, torch.device("cpu"))
    members, copies = config.folds + 1, 1 + config.augment_copies
    assert material.members == members
    assert material.user_schedule.shape == (2 * members, config.steps, config.user_batch)
    block = 0
    for u, (_, labels) in enumerate(users):
        n = len(labels)
        folds = fold_assignment(labels[None, :], config)[0]
        read = []
        for member in range(members):
            row = u * members + member
            held = material.holdout_position[row][material.holdout_mask[row].bool()].tolist()
            drawn = material.user_schedule[row].flatten().numpy() - block  # pool offsets inside the block
            assert drawn.min() >= 0 and drawn.max() < n * copies
            trained_on = set((drawn % n).tolist())  # the sample, whichever copy
            if member < config.folds:
                assert set(held) == set(np.flatnonzero(folds == member).tolist())
                assert trained_on.isdisjoint(held)  # never trains on what it is scored on
            else:
                assert held == [] and trained_on <= set(range(n))
            read += held
            labels_read = material.holdout_labels[row][material.holdout_mask[row].bool()]
            assert labels_read.tolist() == labels[held].tolist()
        assert sorted(read) == list(range(n))  # every labelled sample read once, out of fold
        block += n * copies


def test_chunks_keep_the_users_order_and_reject_too_few_labels_without_crashing() -> None:
    base = random_base(seed=4)
    replay, probe = tiny_bank_and_probe(base)
    users = [UserSamples(*pattern_digits(n, seed=n)) for n in (12, 2, 30, 21, 16)]
    results = finetune_users(base, users, config=TINY, device="cpu", chunk_size=2, replay=replay, probe=probe)
    assert [r.metrics.n_labels for r in results] == [12, 2, 30, 21, 16]
    assert not results[1].decision.promote and "too few" in results[1].decision.reason
    for result in results[:1] + results[2:]:
        assert result.metrics.n_holdout == result.metrics.n_labels and result.metrics.folds == TINY.folds
        assert result.checkpoint.metrics == result.metrics.to_dict()
