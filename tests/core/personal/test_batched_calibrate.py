"""core.personal.batched_calibrate and core.personal.stacked_head give the one-user functions' answers, per user."""

from __future__ import annotations

import torch

from core.model.network import FROZEN_PREFIXES, DigitNet
from core.personal.batched_calibrate import choose_thresholds, combine_batched, fit_temperatures
from core.personal.calibrate import MAX_CANDIDATES, choose_threshold, combine, fit_temperature, nll
from core.personal.stacked_head import StackedHead, channels_last, stack_states


def _probs(generator: torch.Generator, *shape: int, sharp: float) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, 10, generator=generator) * sharp, dim=-1)


def test_temperatures_match_the_scalar_search_for_each_user() -> None:
    generator = torch.Generator().manual_seed(0)
    users, n = 5, 300
    logits = torch.randn(users, n, 10, generator=generator) * torch.tensor([0.5, 1, 3, 8, 20])[:, None, None]
    labels = torch.randint(10, (users, n), generator=generator)
    labels[:, : n // 2] = logits[:, : n // 2].argmax(-1)  # half right: temperatures differ per user
    weights = torch.rand(users, n, generator=generator)
    batched = fit_temperatures(logits, labels, weights)
    for user in range(users):
        alone = fit_temperature(logits[user], labels[user], weights[user])
        # where the NLL is flat float32 rounding moves the minimiser a little: compare the NLL too
        assert abs(float(batched[user]) - alone) <= 1e-3 * alone, user
        got = nll(logits[user], labels[user], float(batched[user]), weights[user])
        assert got <= nll(logits[user], labels[user], alone, weights[user]) + 1e-6, user


def test_thresholds_match_choose_threshold_with_padding_and_many_candidates() -> None:
    generator = torch.Generator().manual_seed(1)
    users, held, n_mnist = 6, 12, MAX_CANDIDATES + 300  # more confidences than candidates: quantiles
    personal = _probs(generator, users, held, sharp=3)
    base = _probs(generator, users, held, sharp=2)
    labels = torch.randint(10, (users, held), generator=generator)
    sizes = torch.tensor([12, 3, 7, 12, 5, 9])
    mask = (torch.arange(held)[None, :] < sizes[:, None]).float()
    mnist_labels = torch.randint(10, (n_mnist,), generator=generator)
    mnist_base = _probs(generator, n_mnist, sharp=4)
    mnist_base[torch.arange(n_mnist // 2), mnist_labels[: n_mnist // 2]] += 5  # a decent base
    mnist_base /= mnist_base.sum(-1, keepdim=True)
    mnist_personal = _probs(generator, users, n_mnist, sharp=4)
    batched = choose_thresholds(personal, base, labels, mask, mnist_personal, mnist_base, mnist_labels)
    chosen = set()
    for user in range(users):
        k = int(sizes[user])
        alone = choose_threshold(personal[user, :k], base[user, :k], labels[user, :k],
                                 mnist_personal_probs=mnist_personal[user], mnist_base_probs=mnist_base,
                                 mnist_labels=mnist_labels)
        assert abs(float(batched[user]) - alone) < 1e-6, user
        chosen.add(round(alone, 6))
    assert len(chosen) > 1  # the users really got different thresholds


def test_combine_batched_is_combine_per_user() -> None:
    generator = torch.Generator().manual_seed(2)
    personal, base = _probs(generator, 3, 20, sharp=2), _probs(generator, 3, 20, sharp=2)
    threshold = torch.tensor([0.0, 0.5, 1.1])
    out = combine_batched(personal, base, threshold)
    for user in range(3):
        torch.testing.assert_close(out[user], combine(personal[user], base[user], float(threshold[user])).probabilities)


def test_stacked_head_is_digitnet_head_for_every_user() -> None:
    torch.manual_seed(0)
    nets = [DigitNet().eval() for _ in range(3)]
    bn3 = nets[0].bn3
    assert bn3.running_mean is not None and bn3.running_var is not None
    with torch.no_grad():
        bn3.running_mean.normal_()
        bn3.running_var.uniform_(0.5, 2)
    names = [n for n, _ in nets[0].named_parameters() if not n.startswith(FROZEN_PREFIXES)]
    params = stack_states([dict(n.named_parameters()) for n in nets], names, torch.device("cpu"))
    own, shared = torch.randn(3, 5, 64, 7, 7), torch.randn(4, 64, 7, 7)
    for net in nets[1:]:  # running statistics are the base's for everyone (frozen)
        net.bn3.load_state_dict(nets[0].bn3.state_dict())
    logits = StackedHead(nets[0]).logits(params, channels_last(own.flatten(0, 1)).view(3, 5, 7, 7, 64),
                                         channels_last(shared))
    with torch.no_grad():
        for user, net in enumerate(nets):
            expected = torch.cat([net.head(own[user]), net.head(shared)])
            torch.testing.assert_close(logits[user], expected, atol=1e-5, rtol=1e-5)
    # conv3 frozen: the classifier inputs computed once (pooled) give the same logits through
    # classify, for per-user samples and for shared ones (one GEMM against every user's fc1)
    head = StackedHead(nets[0])
    pooled = head.pooled(params, channels_last(own.flatten(0, 1)).view(3, 5, 7, 7, 64), channels_last(shared))
    first = {n: p[:1].expand_as(p) for n, p in params.items()}  # shared inputs need the same conv3
    shared_inputs = head.pooled(first, None, channels_last(shared))[0]
    torch.testing.assert_close(head.classify(params, pooled, None), logits, atol=1e-5, rtol=1e-5)
    mixed = head.classify({**params, **{n: first[n] for n in ("conv3.weight", "bn3.weight", "bn3.bias")}},
                          pooled[:, :5], shared_inputs)
    with torch.no_grad():
        for user, net in enumerate(nets):
            net.conv3.load_state_dict(nets[0].conv3.state_dict())
            net.bn3.load_state_dict(nets[0].bn3.state_dict())
            expected = torch.cat([net.fc2(torch.relu(net.fc1(pooled[user, :5]))), net.head(shared)])
            torch.testing.assert_close(mixed[user], expected, atol=1e-4, rtol=1e-4)
