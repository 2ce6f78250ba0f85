"""VPSDE: closed forms of seed 000 Eqs. 3-6 and 8-9, then behaviour, then errors."""
import math

import pytest
import torch
from scipy.integrate import quad

from mempkg import VPSDE

SDE = VPSDE()


@pytest.mark.parametrize("t", [0.0, 1e-4, 1e-3, 0.1, 0.5, 1.0])
def test_m_is_integral_of_half_beta(t):
    integral, _ = quad(lambda s: 0.5 * SDE.beta(s), 0.0, t)
    assert SDE.m(t) == pytest.approx(integral, rel=1e-12, abs=1e-15)
    assert SDE.m(t) == pytest.approx(0.5 * t * 0.1 + 0.25 * t * t * 19.9, rel=1e-14, abs=0)


def test_alpha_v_sigma_closed_forms():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    m = SDE.m(t)
    assert torch.allclose(SDE.alpha(t), torch.exp(-m), rtol=1e-14)
    assert torch.allclose(SDE.v(t), 1 - torch.exp(-2 * m), rtol=1e-12, atol=1e-15)
    assert torch.allclose(SDE.sigma(t) ** 2, SDE.v(t), rtol=1e-14)
    assert torch.allclose(SDE.alpha(t) ** 2 + SDE.v(t), torch.ones_like(t), rtol=1e-14)  # variance preserving


def test_v_keeps_relative_precision_at_small_t():
    t = 1e-9
    assert SDE.v(t) == pytest.approx(2 * SDE.m(t) - 2 * SDE.m(t) ** 2, rel=1e-12)


def test_float_in_float_out_tensor_in_tensor_out():
    assert isinstance(SDE.v(0.3), float)
    out = SDE.v(torch.tensor([0.3], dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


@pytest.mark.parametrize("beta_min,beta_max", [(0.1, 20.0), (0.1, 0.1), (0.0, 5.0)])
def test_t_of_m_inverts_m(beta_min, beta_max):
    sde = VPSDE(beta_min, beta_max)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(sde.t_of_m(sde.m(t)), t, atol=1e-12)
    assert sde.t_of_m(sde.m(0.37)) == pytest.approx(0.37, rel=1e-13)


def test_perturb_uses_the_kernel_of_eq4():
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    noise = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    out = SDE.perturb(x0, 0.4, noise=noise)
    assert torch.allclose(out, SDE.alpha(0.4) * x0 + SDE.sigma(0.4) * noise)


def test_perturb_moments_monte_carlo():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    xt = SDE.perturb(x0, 0.3, generator=g)
    v = SDE.v(0.3)
    assert abs(xt.mean().item() - SDE.alpha(0.3) * 1.5) < 5 * math.sqrt(v / n)
    assert abs(xt.var().item() - v) < 5 * v * math.sqrt(2 / n)


def test_perturb_accepts_per_sample_times():
    x0 = torch.ones(3, 2, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    noise = torch.zeros_like(x0)
    out = SDE.perturb(x0, t, noise=noise)
    assert torch.allclose(out[:, 0, 0], SDE.alpha(t))


def test_ode_drift_is_eq8_and_eq9():
    x = torch.randn(4, 3, dtype=torch.float64)

    def score(z, t):
        return -2.0 * z

    drift = SDE.ode_drift(score, x, 0.25)
    assert torch.allclose(drift, -0.5 * SDE.beta(0.25) * (x - 2 * x))
    # Eq. 9: dx/dm = drift / (dm/dt) = -(x + s)
    assert torch.allclose(drift / (0.5 * SDE.beta(0.25)), -(x + score(x, 0.25)))


def test_prior_log_prob_is_standard_normal():
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(VPSDE.prior_log_prob(x), ref)


@pytest.mark.parametrize("kwargs,name", [
    (dict(beta_min=-0.1), "beta_min"),
    (dict(beta_min=1.0, beta_max=0.5), "beta_max"),
    (dict(beta_max=float("nan")), "beta_max"),
])
def test_bad_schedule_raises_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VPSDE(**kwargs)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval_raises(t):
    with pytest.raises(ValueError, match="t must lie in"):
        SDE.m(t)
    with pytest.raises(ValueError, match="t must lie in"):
        SDE.perturb(torch.zeros(1, 2), t)


def test_perturb_rejects_t_zero_and_bad_noise_shape():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SDE.perturb(torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="noise"):
        SDE.perturb(torch.zeros(1, 2), 0.5, noise=torch.zeros(2, 2))


def test_t_of_m_rejects_out_of_range():
    with pytest.raises(ValueError, match="m must lie"):
        SDE.t_of_m(SDE.m(1.0) + 1.0)
