"""core.personal.calibrate: temperature scaling, the fallback rule, and threshold choice."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.personal.calibrate import (
    NEVER_PERSONAL,
    calibrated_probabilities,
    choose_threshold,
    combine,
    fit_temperature,
    nll,
)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 10, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator).squeeze(1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(2.5, rel=0.1)
    assert nll(logits, labels, fitted) < nll(logits, labels, 1.0)


def test_fit_temperature_stays_within_bounds_and_handles_no_samples() -> None:
    logits = torch.eye(10) * 20  # all right, very confident: the NLL wants T -> 0
    assert fit_temperature(logits, torch.arange(10), bounds=(0.5, 5.0)) == pytest.approx(0.5, rel=1e-3)
    assert fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)) == 1.0


def test_fallback_uses_the_base_answer_when_personal_confidence_is_low() -> None:
    personal = torch.tensor([[0.9, 0.1] + [0.0] * 8, [0.3, 0.35] + [0.035] * 8])
    base = torch.tensor([[0.2, 0.8] + [0.0] * 8, [0.0, 0.1, 0.9] + [0.0] * 7])
    combined = combine(personal, base, threshold=0.5)
    assert combined.digits.tolist() == [0, 2]
    assert combined.personal.tolist() == [True, False]
    assert combined.confidences.tolist() == pytest.approx([0.9, 0.9])
    assert combine(personal, base, NEVER_PERSONAL).digits.tolist() == [1, 2]


def test_threshold_prefers_the_personal_model_when_it_is_right_on_held_out_samples() -> None:
    labels = torch.tensor([3, 3, 7, 7])
    personal = calibrated_probabilities(torch.nn.functional.one_hot(labels, 10).float() * 3, 1.0)
    base = calibrated_probabilities(torch.nn.functional.one_hot(torch.tensor([5, 5, 1, 1]), 10).float() * 3, 1.0)
    threshold = choose_threshold(personal, base, labels)
    assert bool((combine(personal, base, threshold).digits == labels).all())


probability_rows = st.lists(st.lists(st.floats(0.01, 1.0), min_size=10, max_size=10), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(personal_rows=probability_rows, base_rows=probability_rows, seed=st.integers(0, 1000))
def test_chosen_threshold_never_lowers_combined_mnist_accuracy_below_the_base(
        personal_rows: list[list[float]], base_rows: list[list[float]], seed: int) -> None:
    n = min(len(personal_rows), len(base_rows))
    personal = torch.tensor(personal_rows[:n])
    base = torch.tensor(base_rows[:n])
    personal, base = personal / personal.sum(1, keepdim=True), base / base.sum(1, keepdim=True)
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))
    user = slice(0, n // 2)
    mnist = slice(n // 2, n)
    threshold = choose_threshold(personal[user], base[user], labels[user],
                                 mnist_personal_probs=personal[mnist], mnist_base_probs=base[mnist],
                                 mnist_labels=labels[mnist])
    combined = combine(personal[mnist], base[mnist], threshold)
    base_accuracy = (base[mnist].argmax(1) == labels[mnist]).float().mean()
    assert (combined.digits == labels[mnist]).float().mean() >= base_accuracy - 1e-6
