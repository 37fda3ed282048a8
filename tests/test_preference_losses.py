"""KTO, ORPO and SimPO losses against plain float64 references written from the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from lorarlhf.training.losses import kto_loss, kto_reference_point, orpo_log_odds_ratio, orpo_loss, simpo_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def kto_reference(r, desirable, z, beta, lam_d, lam_u) -> float:
    """Ethayarajh et al. 2024, eq. 8: E[lambda_y - v(x, y)], one example at a time."""
    terms = []
    for r_i, up in zip(r, desirable, strict=True):
        if up:
            terms.append(lam_d - lam_d * sigmoid(beta * (r_i - z)))
        else:
            terms.append(lam_u - lam_u * sigmoid(beta * (z - r_i)))
    return sum(terms) / len(terms)


def orpo_reference(chosen, rejected, lam) -> float:
    """Hong et al. 2024, eqs. 6-7, with P = exp(mean token log-prob)."""
    terms = []
    for c, r in zip(chosen, rejected, strict=True):
        p_c, p_r = math.exp(c), math.exp(r)
        log_odds_ratio = math.log(p_c / (1 - p_c)) - math.log(p_r / (1 - p_r))
        terms.append(-c - lam * math.log(sigmoid(log_odds_ratio)))
    return sum(terms) / len(terms)


def simpo_reference(chosen, rejected, beta, gamma) -> float:
    """Meng et al. 2024, eq. 6, on mean token log-probs."""
    terms = [-math.log(sigmoid(beta * c - beta * r - gamma)) for c, r in zip(chosen, rejected, strict=True)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_matches_its_equation(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(37, generator=g, dtype=torch.float64) * 3
    desirable = torch.rand(37, generator=g) < 0.4
    mismatched = torch.randn(37, generator=g, dtype=torch.float64) + 0.2
    beta, lam_d, lam_u = 0.1 + torch.rand(1, generator=g).item(), 1.3, 0.7
    z = max(0.0, mismatched.mean().item())
    assert kto_reference_point(mismatched.to(dtype)).item() == pytest.approx(z, rel=1e-6, abs=1e-7)
    got = kto_loss(
        r.to(dtype),
        desirable,
        torch.tensor(z, dtype=dtype),
        beta=beta,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
    )
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    assert got.item() == pytest.approx(
        kto_reference(r.tolist(), desirable.tolist(), z, beta, lam_d, lam_u), rel=tolerance
    )


def test_kto_reference_point_is_clamped_and_detached():
    mismatched = torch.tensor([-1.0, -2.0], requires_grad=True)
    z = kto_reference_point(mismatched)
    assert z.item() == 0.0 and not z.requires_grad
    assert kto_reference_point(torch.tensor([1.0, 2.0], requires_grad=True)).item() == 1.5


def test_kto_gradient_pushes_desirable_up_and_undesirable_down():
    r = torch.zeros(2, requires_grad=True)
    kto_loss(r, torch.tensor([True, False]), torch.tensor(0.0), beta=0.5).backward()
    # d/dr [1 - sigmoid(beta r)] = -beta sigmoid'(0) = -beta / 4 for the desirable one, +beta / 4 for the other, / 2
    assert r.grad.tolist() == pytest.approx([-0.5 / 8, 0.5 / 8], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_matches_its_equation(seed):
    g = torch.Generator().manual_seed(seed)
    chosen = -torch.rand(41, generator=g, dtype=torch.float64) * 4 - 1e-3  # mean token log-probs < 0
    rejected = -torch.rand(41, generator=g, dtype=torch.float64) * 4 - 1e-3
    lam = 0.05 + torch.rand(1, generator=g).item()
    expected = orpo_reference(chosen.tolist(), rejected.tolist(), lam)
    assert orpo_loss(chosen, rejected, lam=lam).item() == pytest.approx(expected, rel=1e-10)
    assert orpo_loss(chosen.float(), rejected.float(), lam=lam).item() == pytest.approx(expected, rel=1e-5)


def test_orpo_log_odds_is_exact_near_certainty():
    # P = exp(-1e-10): odds = P / (1 - P) ~ 1e10, where 1 - exp(log P) in float32 would be 0
    got = orpo_log_odds_ratio(torch.tensor([-1e-10], dtype=torch.float32), torch.tensor([math.log(0.5)]))
    assert got.item() == pytest.approx(math.log((math.exp(-1e-10)) / -math.expm1(-1e-10)), rel=1e-5)


def test_orpo_gradient_includes_the_sft_term():
    chosen, rejected = torch.tensor([-1.0], requires_grad=True), torch.tensor([-1.0])
    orpo_loss(chosen, rejected, lam=0.0).backward()
    assert chosen.grad.item() == pytest.approx(-1.0)  # lambda = 0: plain NLL of the chosen answer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simpo_matches_its_equation(seed):
    g = torch.Generator().manual_seed(seed)
    chosen = -torch.rand(29, generator=g, dtype=torch.float64) * 5
    rejected = -torch.rand(29, generator=g, dtype=torch.float64) * 5
    beta, gamma = 1 + torch.rand(1, generator=g).item() * 2, torch.rand(1, generator=g).item()
    expected = simpo_reference(chosen.tolist(), rejected.tolist(), beta, gamma)
    assert simpo_loss(chosen, rejected, beta=beta, gamma=gamma).item() == pytest.approx(expected, rel=1e-12)
    got32 = simpo_loss(chosen.float(), rejected.float(), beta=beta, gamma=gamma)
    assert got32.item() == pytest.approx(expected, rel=1e-5)


def test_simpo_at_equal_likelihoods_is_the_margin_loss():
    zero = torch.zeros(3)
    assert simpo_loss(zero, zero, beta=2.0, gamma=1.0).item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)
