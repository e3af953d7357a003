"""core.personal.finetune: freezing, determinism, k folds, learning, metrics, and the promotion gate."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from core.model.network import FROZEN_PREFIXES, Checkpoint, DigitNet, normalize
from core.personal.batched_finetune import UserSamples, finetune_users
from core.personal.calibrate import MnistProbe
from core.personal.finetune import (
    FinetuneConfig,
    FinetuneMetrics,
    ReplayBank,
    check_samples,
    finetune_user,
    fold_assignment,
    gate,
    gate_metrics,
    head_state,
    merge_state,
)

TINY = FinetuneConfig(steps=12, user_batch=8, replay_batch=8, eval_every=4, augment_copies=1,
                      replay_size=40, mnist_subset=40, lr=3e-3)


def pattern_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 'handwriting': digit k is a bright 6x6 block at grid cell k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 4)
        image[2 + 8 * row:8 + 8 * row, 2 + 6 * col:8 + 6 * col] = 255
    return images, labels.astype(np.int64)


def random_base(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    net = DigitNet()
    for module in net.modules():  # non-default BN statistics, so "unchanged" means something
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return Checkpoint(state_dict={k: v.clone() for k, v in net.state_dict().items()},
                      meta={"data_sha256": "test"})


def tiny_bank_and_probe(base: Checkpoint) -> tuple[ReplayBank, MnistProbe]:
    images, labels = pattern_digits(40, seed=99)
    samples = (torch.from_numpy(images), torch.from_numpy(labels))
    device = torch.device("cpu")
    return (ReplayBank(base, 40, device, samples=samples),
            MnistProbe(base, device=device, samples=samples))


@pytest.fixture(scope="module")
def base() -> Checkpoint:
    return random_base()


def test_training_moves_only_the_trained_parameters_and_never_batchnorm_statistics(base: Checkpoint) -> None:
    images, labels = pattern_digits(30, seed=1)
    replay, probe = tiny_bank_and_probe(base)
    result = finetune_user(base, images, labels, config=TINY, replay=replay, probe=probe, device="cpu")
    head = result.checkpoint.state_dict
    assert set(head) == set(head_state(base.state_dict))
    assert not any(k.startswith(FROZEN_PREFIXES) for k in head)
    for name in head:
        if "running_" in name or "num_batches" in name:
            assert torch.equal(head[name], base.state_dict[name]), name
    # the default trains the classifier only: conv3 and bn3 stay bit-identical
    assert TINY.trainable == ("fc1.", "fc2.") and result.metrics.best_step and result.metrics.best_step > 0
    for name in ("conv3.weight", "bn3.weight", "bn3.bias"):
        assert torch.equal(head[name], base.state_dict[name]), name
    assert not torch.equal(head["fc2.weight"], base.state_dict["fc2.weight"])
    # the whole head can be trained too (conv3 through the stacked im2col path)
    whole = FinetuneConfig(**{**TINY.__dict__, "trainable": ("conv3.", "bn3.", "fc1.", "fc2.")})
    full = finetune_user(base, images, labels, config=whole, replay=replay, probe=probe, device="cpu")
    assert full.metrics.best_step and full.metrics.best_step > 0
    assert not torch.equal(full.checkpoint.state_dict["conv3.weight"], base.state_dict["conv3.weight"])
    for name in head:
        if "running_" in name or "num_batches" in name:
            assert torch.equal(full.checkpoint.state_dict[name], base.state_dict[name]), name


def test_personal_checkpoint_holds_only_the_head_and_merges_back(base: Checkpoint) -> None:
    images, labels = pattern_digits(30, seed=2)
    replay, probe = tiny_bank_and_probe(base)
    result = finetune_user(base, images, labels, config=TINY, replay=replay, probe=probe, device="cpu")
    ckpt = result.checkpoint
    assert set(ckpt.state_dict) == set(head_state(base.state_dict))
    assert ckpt.meta["kind"] == "personal" and ckpt.meta["base_data_sha256"] == "test"
    assert ckpt.meta["temperature"] > 0 and 0 <= ckpt.meta["threshold"] <= 1.01
    restored = Checkpoint.from_bytes(ckpt.to_bytes())
    merged = merge_state(base, restored)
    for name in base.state_dict:
        expected = restored.state_dict[name] if name in restored.state_dict else base.state_dict[name]
        assert torch.equal(merged[name], expected)
    assert FinetuneMetrics.from_dict(restored.metrics) == result.metrics
    m = result.metrics
    # every labelled sample is read out of fold once, by a model that did not train on it
    assert m.n_labels == m.n_train == m.n_holdout == 30 and m.folds == TINY.folds
    assert m.mnist_subset == 40 and m.heldout_before is not None and m.mnist_accuracy is not None
    assert result.decision == gate_metrics(result.metrics)


def test_one_user_is_a_batch_of_one_whoever_else_is_in_the_batch(base: Checkpoint) -> None:
    replay, probe = tiny_bank_and_probe(base)
    users = [UserSamples(*pattern_digits(n, seed=20 + n)) for n in (12, 25, 3, 18)]
    batched = finetune_users(base, users, config=TINY, device="cpu", chunk_size=3, replay=replay, probe=probe)
    assert not batched[2].decision.promote and "too few" in batched[2].decision.reason
    for user, together in zip(users, batched, strict=True):
        alone = finetune_user(base, user.images, user.labels, config=TINY, replay=replay, probe=probe, device="cpu")
        for name, value in alone.checkpoint.state_dict.items():
            # float rounding differs with the batch shape; Adam turns it into steps of up to lr
            torch.testing.assert_close(together.checkpoint.state_dict[name], value, atol=1e-3, rtol=1e-3)
        assert together.metrics.best_step == alone.metrics.best_step
        assert together.metrics.n_holdout == alone.metrics.n_holdout
        assert together.decision.promote == alone.decision.promote
    first, second = (r.checkpoint.state_dict["fc2.weight"] for r in batched[:2])
    assert not torch.equal(first, second)


def test_a_returning_user_is_compared_on_the_digits_their_current_model_never_saw(base: Checkpoint) -> None:
    replay, probe = tiny_bank_and_probe(base)
    images, labels = pattern_digits(40, seed=6)
    first = finetune_user(base, images[:20], labels[:20], config=TINY, replay=replay, probe=probe, device="cpu")
    assert first.metrics.n_labels == 20
    again = finetune_user(base, images, labels, current=first.checkpoint, config=TINY, replay=replay,
                          probe=probe, device="cpu")
    assert again.metrics.n_labels == 40 and again.metrics.n_holdout == 20  # samples 20..39
    # too few new ones (< MIN_FRESH): all samples
    close = finetune_user(base, images[:25], labels[:25], current=first.checkpoint, config=TINY, replay=replay,
                          probe=probe, device="cpu")
    assert close.metrics.n_holdout == 25


def test_same_seed_same_weights_and_other_seed_differs(base: Checkpoint) -> None:
    images, labels = pattern_digits(30, seed=3)
    replay, probe = tiny_bank_and_probe(base)
    runs = [finetune_user(base, images, labels, config=cfg, replay=replay, probe=probe, device="cpu")
            for cfg in (TINY, TINY, FinetuneConfig(**{**TINY.__dict__, "seed": 7}))]
    first, again, other = (r.checkpoint.state_dict for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_fine_tuning_learns_the_users_digits(base: Checkpoint) -> None:
    images, labels = pattern_digits(60, seed=4)
    replay, probe = tiny_bank_and_probe(base)
    config = FinetuneConfig(**{**TINY.__dict__, "steps": 40, "eval_every": 10})
    result = finetune_user(base, images, labels, config=config, replay=replay, probe=probe, device="cpu")
    m = result.metrics
    assert m.heldout_personal is not None and m.heldout_before is not None
    # out of fold: read by fold models that never saw those digits
    assert m.heldout_personal > m.heldout_before + 0.3
    assert m.best_step is not None and m.best_step > 0


def test_folds_are_stratified_deterministic_and_independent_of_the_batch() -> None:
    rng = np.random.default_rng(1)
    config = FinetuneConfig(folds=5)
    for n in (5, 12, 37, 100):
        labels = rng.integers(0, 10, (20, n))
        labels[:4] = rng.integers(0, 3, (4, n))  # few distinct digits, too
        folds = fold_assignment(labels, config)
        assert np.array_equal(folds, fold_assignment(labels, config))
        for user in range(len(labels)):
            sizes = np.bincount(folds[user], minlength=5)
            assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n
            for digit in range(10):  # each digit spread over the folds as evenly as it can be
                per_fold = np.bincount(folds[user][labels[user] == digit], minlength=5)
                assert per_fold.max() - per_fold.min() <= 1
            np.testing.assert_array_equal(folds[user], fold_assignment(labels[user:user + 1], config)[0])
    other = fold_assignment(labels, FinetuneConfig(folds=5, seed=1))
    assert not np.array_equal(other, folds)


def test_too_few_or_bad_samples_are_rejected_with_a_reason_not_an_exception(base: Checkpoint) -> None:
    images, labels = pattern_digits(3, seed=5)
    result = finetune_user(base, images, labels, config=TINY, device="cpu")
    assert not result.decision.promote and "too few" in result.decision.reason
    assert result.metrics.n_labels == 3 and result.metrics.heldout_after is None
    assert "bad samples" in (check_samples(np.zeros((4, 20, 20), np.uint8), np.zeros(4), TINY) or "")
    assert "0-9" in (check_samples(np.zeros((9, 28, 28), np.uint8), np.full(9, 11), TINY) or "")


def test_metrics_round_trip_and_read_rows_written_by_the_old_code() -> None:
    metrics = FinetuneMetrics(n_labels=60, n_train=60, n_holdout=60, folds=5, heldout_before=0.5,
                              heldout_after=0.75, mnist_subset=2000, best_step=40, version=3, reason="promoted: x")
    assert FinetuneMetrics.from_dict(metrics.to_dict()) == metrics
    assert "heldout_nll_after" not in metrics.to_dict()  # unset fields are left out of the JSON
    old = {"n_labels": 60.0, "n_train": 48.0, "n_holdout": 12.0, "heldout_before": 0.667, "heldout_after": 0.833,
           "mnist_accuracy": 0.987, "mnist_base_accuracy": 0.99, "mnist_subset": 2000.0, "best_step": 30.0,
           "version": 2, "reason": "rejected: ...", "heldout_combined": 0.9, "train_seconds": "junk"}
    parsed = FinetuneMetrics.from_dict(old)
    assert parsed.n_labels == 60 and parsed.n_holdout == 12 and parsed.mnist_subset == 2000 and parsed.version == 2
    assert isinstance(parsed.n_holdout, int) and parsed.folds is None and parsed.train_seconds is None
    assert parsed.heldout_after == pytest.approx(0.833) and parsed.reason == "rejected: ..."
    assert FinetuneMetrics.from_dict({}) == FinetuneMetrics() and FinetuneMetrics.from_dict(None).n_labels == 0
    assert "best_step" in parsed and "heldout_nll_after" not in parsed
    # the old row's gate: held-out 66.7% -> 83.3%, MNIST exactly 0.30 points down: promoted now
    assert gate_metrics(parsed).promote
    assert not gate_metrics(FinetuneMetrics(n_labels=5)).promote
    # nothing learnt (early stopping kept the base head): never announced as a new model
    same = FinetuneMetrics(n_labels=10, n_holdout=10, heldout_before=0.8, heldout_after=0.8, heldout_nll_before=0.6,
                           heldout_nll_after=0.4, mnist_accuracy=0.99, mnist_base_accuracy=0.99, mnist_subset=10_000,
                           best_step=0)
    assert not gate_metrics(same).promote and "no training step" in gate_metrics(same).reason
    assert gate_metrics(dataclasses.replace(same, best_step=30)).promote


def test_gate_promotes_only_a_better_candidate_within_the_mnist_bound() -> None:
    ok = gate(heldout_before=0.6, heldout_after=0.9, mnist_base=0.995, mnist_candidate=0.993)
    assert ok.promote and "promoted" in ok.reason
    worse = gate(heldout_before=0.9, heldout_after=0.8, mnist_base=0.995, mnist_candidate=0.995)
    assert not worse.promote and "not better" in worse.reason
    forgetting = gate(heldout_before=0.6, heldout_after=0.95, mnist_base=0.995, mnist_candidate=0.991)
    assert not forgetting.promote and "MNIST" in forgetting.reason and "0.40 points" in forgetting.reason
    # the bound is inclusive, in whole probe digits: 6 of 2,000 down is 0.30 points, 7 is not
    assert gate(heldout_before=0.667, heldout_after=0.833, mnist_base=1980 / 2000, mnist_candidate=1974 / 2000,
                n_compared=12, mnist_subset=2000).promote
    # float32 accuracies (as torch computes them) of the same counts
    assert gate(heldout_before=0.5, heldout_after=0.6, mnist_base=float(np.float32(0.99)),
                mnist_candidate=float(np.float32(0.987)), mnist_subset=2000).promote
    assert not gate(heldout_before=0.667, heldout_after=0.833, mnist_base=1980 / 2000,
                    mnist_candidate=1973 / 2000, n_compared=12, mnist_subset=2000).promote
    # ties in the count of right answers (e.g. both 100%): the out-of-fold NLL decides
    tie: dict[str, Any] = dict(heldout_before=1.0, heldout_after=1.0, mnist_base=0.99, mnist_candidate=0.99,
                               n_compared=60, mnist_subset=2000)
    assert not gate(**tie).promote
    surer = gate(**tie, heldout_nll_before=0.20, heldout_nll_after=0.05)
    assert surer.promote and "surer" in surer.reason and "60/60" in surer.reason
    assert not gate(**tie, heldout_nll_before=0.05, heldout_nll_after=0.045).promote  # within the margin
    assert not gate(**tie, heldout_nll_before=0.05, heldout_nll_after=0.20).promote
    # never when fewer digits are right, whatever the NLL, or MNIST drops past the bound
    assert not gate(heldout_before=0.9, heldout_after=0.8, mnist_base=0.99, mnist_candidate=0.99,
                    heldout_nll_before=0.5, heldout_nll_after=0.1).promote
    assert not gate(heldout_before=0.8, heldout_after=0.8, mnist_base=0.99, mnist_candidate=0.985,
                    heldout_nll_before=0.5, heldout_nll_after=0.1).promote
    # one digit more of 60 is a promotion
    assert gate(heldout_before=50 / 60, heldout_after=51 / 60, mnist_base=0.99, mnist_candidate=0.99,
                n_compared=60, mnist_subset=2000).promote


@pytest.mark.slow
def test_real_base_personal_model_helps_a_styled_user_and_keeps_mnist(mnist_dir: object) -> None:
    from core.model.network import DEFAULT_WEIGHTS, load_base
    from core.personal.calibrate import calibrated_probabilities, combine
    from core.sim.crop_writers import DEV_STYLES, styled_user

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("core/weights/base.pt not trained yet")
    base = load_base(DEFAULT_WEIGHTS)
    name = "dev-back-flag1"  # flagged 1s the base reads as 7s: about half its answers are wrong
    user = styled_user(name, DEV_STYLES[name], n=300)
    result = finetune_user(base, user.images[:100], user.labels[:100], device="cpu")
    personal = result.checkpoint
    probe = MnistProbe(base, subset=0, device="cpu")  # all 10,000 test digits
    personal_probs = calibrated_probabilities(probe.logits(personal.state_dict), personal.meta["temperature"])
    base_probs = calibrated_probabilities(probe.base_logits, personal.meta["base_temperature"])
    combined = combine(personal_probs, base_probs, personal.meta["threshold"])
    mnist_base = probe.accuracy()
    assert float((combined.digits == probe.labels).float().mean()) >= mnist_base - 0.001
    assert float((personal_probs.argmax(1) == probe.labels).float().mean()) >= mnist_base - 0.003

    model = base.build()
    model.load_state_dict(personal.state_dict, strict=False)
    new = torch.from_numpy(user.images[100:])
    with torch.no_grad():
        base_right = (base.build()(normalize(new)).argmax(1).numpy() == user.labels[100:]).mean()
        personal_right = (model(normalize(new)).argmax(1).numpy() == user.labels[100:]).mean()
    assert 1 - personal_right <= (1 - base_right) / 2
