"""core.batched_finetune: many users at once give the one-user path's results."""

from __future__ import annotations

import numpy as np
import torch

from core.batched_finetune import UserSamples, finetune_users
from core.finetune import FinetuneConfig, finetune_user
from core.finetune_prep import split_holdout_many
from tests.core.test_finetune import TINY, pattern_digits, random_base, tiny_bank_and_probe


def test_three_users_batched_match_the_one_user_path() -> None:
    base = random_base(seed=3)
    replay, probe = tiny_bank_and_probe(base)
    config = FinetuneConfig(**{**TINY.__dict__, "steps": 16})
    # a returning user starts from their active personal head
    warm_start = finetune_user(base, *pattern_digits(20, seed=30), config=config, replay=replay,
                               probe=probe, device="cpu").checkpoint
    users = [UserSamples(*pattern_digits(n, seed=10 + n), current=current)
             for n, current in ((12, None), (30, warm_start), (21, None))]
    users.insert(1, UserSamples(*pattern_digits(2, seed=1)))  # too few labels: rejected, no crash

    batched = finetune_users(base, users, config=config, device="cpu", chunk_size=2, replay=replay,
                             probe=probe)
    assert len(batched) == 4
    assert not batched[1].decision.promote and "too few" in batched[1].decision.reason
    for user, result in zip(users[:1] + users[2:], batched[:1] + batched[2:], strict=True):
        alone = finetune_user(base, user.images, user.labels, current=user.current, config=config,
                              replay=replay, probe=probe, device="cpu")
        assert set(result.checkpoint.state_dict) == set(alone.checkpoint.state_dict)
        for name, value in alone.checkpoint.state_dict.items():
            # Adam turns float-rounding differences of near-zero gradients into steps of up to lr,
            # so weights agree to ~1e-4 (training moves them by up to steps * lr = 0.05)
            torch.testing.assert_close(result.checkpoint.state_dict[name], value, atol=1e-3, rtol=1e-3)
        assert result.metrics["best_step"] == alone.metrics["best_step"]
        for key in ("heldout_before", "heldout_after", "mnist_accuracy"):
            assert abs(result.metrics[key] - alone.metrics[key]) < 1e-6, key
        assert result.decision.promote == alone.decision.promote
    # the users really trained differently (stacked, not shared, parameters)
    assert not torch.equal(batched[0].checkpoint.state_dict["fc2.weight"],
                           batched[2].checkpoint.state_dict["fc2.weight"])


def test_hold_out_split_for_many_users_is_per_user_stratified_and_independent_of_the_batch() -> None:
    rng = np.random.default_rng(1)
    config = FinetuneConfig()
    for n in (5, 12, 37, 100):
        labels = rng.integers(0, 10, (20, n))
        labels[:4] = rng.integers(0, 3, (4, n))  # few distinct digits, too
        train, held = split_holdout_many(labels, config)
        n_hold = min(max(config.min_holdout, round(config.holdout_fraction * n)), n - 1)
        for user in range(len(labels)):
            assert len(held[user]) == n_hold and np.all(np.diff(held[user]) > 0)
            assert sorted(set(train[user]) | set(held[user])) == list(range(n))
            if n >= 37:  # enough samples per digit: each digit held out in proportion (+-1)
                counts = np.bincount(labels[user], minlength=10)
                held_counts = np.bincount(labels[user][held[user]], minlength=10)
                assert np.all(np.abs(held_counts - counts * n_hold / n) <= 1)
            # the same split whoever else is in the batch
            alone_train, alone_held = split_holdout_many(labels[user:user + 1], config)
            np.testing.assert_array_equal(train[user], alone_train[0])
            np.testing.assert_array_equal(held[user], alone_held[0])
