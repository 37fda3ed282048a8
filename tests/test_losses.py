"""Reward-model losses against hand-computed values and slow, obvious references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lorarlhf.training.losses import (
    bradley_terry_loss,
    linear_utility_loss,
    plackett_luce_loss,
    prompt_aware_utility_loss,
    reward_centering_loss,
)


def test_bradley_terry_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log sigmoid(0) = log 2
    expected = (math.log1p(math.exp(-1)) + math.log(2)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_margin_and_weights():
    chosen, rejected = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    margin, weight = torch.tensor([1.5, 0.0]), torch.tensor([2.0, 1.0])
    # pair 1: -log sigmoid(3 - 1 - 1.5); pair 2: -log sigmoid(-1); weighted mean with weights 2 and 1
    terms = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0))]
    expected = (2 * terms[0] + 1 * terms[1]) / 3
    got = bradley_terry_loss(chosen, rejected, margin=margin, weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_gradient_is_sigmoid_of_the_wrong_order():
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([-0.2])
    bradley_terry_loss(chosen, rejected).backward()
    # d/dr_c [-log sigmoid(r_c - r_r)] = -(1 - sigmoid(r_c - r_r)) = -sigmoid(r_r - r_c)
    assert chosen.grad.item() == pytest.approx(-1 / (1 + math.exp(0.5)), rel=1e-6)


def test_reward_centering():
    assert reward_centering_loss(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 2.0])).item() == pytest.approx(2.0)


def test_linear_utility_and_prompt_aware_choice():
    chosen, rejected = torch.tensor([0.0, 1.0]), torch.tensor([0.0, -1.0])
    s = 1 / (1 + math.exp(-1))
    assert linear_utility_loss(chosen, rejected).item() == pytest.approx(-(0 + (s - (1 - s))) / 2, rel=1e-6)
    closed = torch.tensor([True, False])
    got = prompt_aware_utility_loss(chosen, rejected, closed)
    expected = (-(0.5 - 0.5) + math.log1p(math.exp(-2.0))) / 2  # linear for the closed pair, BT for the open one
    assert got.item() == pytest.approx(expected, rel=1e-6)


def plackett_luce_reference(ranking: list[float]) -> float:
    """-log of prod_i exp(r_i) / sum_{j >= i} exp(r_j), the probability of drawing the ranking in order."""
    total = 0.0
    for i in range(len(ranking) - 1):
        total -= ranking[i] - math.log(sum(math.exp(r) for r in ranking[i:]))
    return total


def test_plackett_luce_matches_reference_on_ragged_rankings():
    gen = torch.Generator().manual_seed(0)
    rankings = [torch.randn(k, generator=gen).tolist() for k in (2, 4, 3, 5)]
    width = max(len(r) for r in rankings)
    rewards = torch.tensor([r + [123.0] * (width - len(r)) for r in rankings])  # padding must not matter
    lengths = torch.tensor([len(r) for r in rankings])
    expected = sum(plackett_luce_reference(r) for r in rankings) / len(rankings)
    assert plackett_luce_loss(rewards, lengths).item() == pytest.approx(expected, rel=1e-5)


def test_plackett_luce_of_two_is_bradley_terry():
    chosen, rejected = torch.tensor([1.2, -0.3]), torch.tensor([0.4, 0.9])
    pl = plackett_luce_loss(torch.stack([chosen, rejected], 1), torch.tensor([2, 2]))
    assert pl.item() == pytest.approx(bradley_terry_loss(chosen, rejected).item(), rel=1e-6)


def test_plackett_luce_probabilities_sum_to_one_over_all_orders():
    rewards = torch.tensor([0.5, -1.0, 2.0])
    total = 0.0
    for order in itertools.permutations(range(3)):
        total += math.exp(-plackett_luce_loss(rewards[list(order)][None], torch.tensor([3])).item())
    assert total == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------- RL-free preference losses


def test_dpo_hand_computed_and_label_smoothing():
    from lorarlhf.training.losses import dpo_log_ratio_margin, dpo_loss

    margin = dpo_log_ratio_margin(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    )
    assert margin.item() == pytest.approx(1.5)  # (-1 + 2) - (-3 + 2.5)
    assert dpo_loss(margin, beta=0.1).item() == pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-6)
    smoothed = dpo_loss(margin, beta=0.1, label_smoothing=0.2).item()
    expected = 0.8 * math.log1p(math.exp(-0.15)) + 0.2 * math.log1p(math.exp(0.15))
    assert smoothed == pytest.approx(expected, rel=1e-6)


def test_ipo_regresses_the_margin_to_one_over_two_beta():
    from lorarlhf.training.losses import ipo_loss

    assert ipo_loss(torch.tensor([5.0]), beta=0.1).item() == pytest.approx(0.0)
    assert ipo_loss(torch.tensor([3.0, 7.0]), beta=0.1).item() == pytest.approx(4.0)


def test_cpl_hand_computed_and_reduces_to_a_logistic_on_scaled_log_probs():
    from lorarlhf.training.losses import cpl_loss

    chosen, rejected = torch.tensor([-4.0]), torch.tensor([-6.0])
    # softplus(0.5 * 0.1 * -6 - 0.1 * -4) = log(1 + exp(-0.3 + 0.4))
    assert cpl_loss(chosen, rejected, alpha=0.1, lam=0.5).item() == pytest.approx(math.log1p(math.exp(0.1)), rel=1e-6)
    plain = cpl_loss(chosen, rejected, alpha=0.1)
    assert plain.item() == pytest.approx(bradley_terry_loss(0.1 * chosen, 0.1 * rejected).item(), rel=1e-6)
