"""Forward-SDE simulation, ODE and SDE samplers, Tweedie denoising."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore
from mempkg.data import digits
from mempkg.metrics import nearest_neighbors
from mempkg.sampling import denoise, forward_marginals, sample_ode, sample_sde, simulate_forward_sde

SDE = VPSDE()
F64 = torch.float64


def test_forward_sde_matches_the_kernel():
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 2.0, dtype=F64)
    for t, xt in zip([0.1, 0.6], forward_marginals(x0, SDE, [0.1, 0.6], n_steps=600, generator=g)):
        v = SDE.v(t)
        assert abs(xt.mean().item() - SDE.alpha(t) * 2.0) < 4.5 * math.sqrt(v / n)
        assert abs(xt.var().item() - v) < 4.5 * v * math.sqrt(2 / n)


def test_forward_sde_is_seeded():
    x0 = torch.zeros(5, 2, dtype=F64)
    a = simulate_forward_sde(x0, SDE, 0.5, 10, generator=torch.Generator().manual_seed(3))
    b = simulate_forward_sde(x0, SDE, 0.5, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_denoise_is_the_gaussian_posterior_mean():
    # data N(mu, lam I): E[x0 | xt] = mu + alpha lam / (alpha^2 lam + v) (xt - alpha mu)
    mu, lam, t = torch.tensor([1.0, -1.0], dtype=F64), 0.7, 0.3
    model = GaussianScore(mu, lam * torch.ones(2, dtype=F64), SDE)
    xt = torch.randn(6, 2, dtype=F64)
    a, v = SDE.alpha(t), SDE.v(t)
    assert torch.allclose(denoise(model, xt, SDE, t), mu + a * lam / (a * a * lam + v) * (xt - a * mu))


def test_ode_sampler_with_the_exact_empirical_score_returns_copies():
    train = digits(16, seed=0, dtype=F64)
    samples = sample_ode(EmpiricalScore(train, SDE), (40, 1, 8, 8), SDE, n_steps=40,
                         generator=torch.Generator().manual_seed(0), dtype=F64)
    dist, _ = nearest_neighbors(samples, train)
    assert dist.max().item() < 1e-8


def test_ode_sampler_with_given_noise_is_deterministic():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    noise = torch.randn(4, 2, dtype=F64)
    a = sample_ode(model, (4, 2), SDE, n_steps=20, noise=noise)
    assert torch.equal(a, sample_ode(model, (4, 2), SDE, n_steps=20, noise=noise))
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_ode(model, (5, 2), SDE, n_steps=20, noise=noise)


def test_ode_sampler_in_batches_draws_the_same_samples():
    """batch_size only cuts the work: the noise is drawn for all samples first (the exact score of a
    Gaussian acts on each sample alone, so the batches change nothing beyond rounding)."""
    model = GaussianScore(torch.tensor([1.0, -2.0], dtype=F64), torch.eye(2, dtype=F64), SDE)
    whole = sample_ode(model, (7, 2), SDE, n_steps=20, generator=torch.Generator().manual_seed(3), dtype=F64)
    parts = sample_ode(model, (7, 2), SDE, n_steps=20, generator=torch.Generator().manual_seed(3), dtype=F64,
                       batch_size=3)
    assert torch.allclose(whole, parts, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="batch_size"):
        sample_ode(model, (7, 2), SDE, batch_size=0)


def test_sde_sampler_reaches_the_data_gaussian():
    cov = torch.tensor([[1.0, 0.5], [0.5, 0.8]], dtype=F64)
    model = GaussianScore(torch.tensor([2.0, -1.0], dtype=F64), cov, SDE)
    x = sample_sde(model, (20_000, 2), SDE, n_steps=500, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert torch.allclose(x.mean(0), model.mean, atol=0.04)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)


def test_sampler_arguments_are_checked():
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    with pytest.raises(ValueError, match="t_end"):
        sample_ode(model, (2, 2), SDE, t_end=1.0)
    with pytest.raises(ValueError, match="t_start must be smaller"):
        simulate_forward_sde(torch.zeros(2, 2), SDE, 0.2, 5, t_start=0.5)


def test_the_old_argument_orders_still_work_with_a_warning():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    noise = torch.randn(3, 2, dtype=F64)
    with pytest.warns(DeprecationWarning, match="sample_ode"):
        old = sample_ode(model, SDE, (3, 2), n_steps=5, noise=noise)
    assert torch.equal(old, sample_ode(model, (3, 2), SDE, n_steps=5, noise=noise))
    with pytest.warns(DeprecationWarning, match="denoise"):
        assert torch.equal(denoise(model, SDE, noise, 0.2), denoise(model, noise, SDE, 0.2))
    x0 = torch.zeros(4, 2)
    with pytest.warns(DeprecationWarning, match="simulate_forward_sde"):
        old = simulate_forward_sde(SDE, x0, 0.5, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(old, simulate_forward_sde(x0, SDE, 0.5, 10, generator=torch.Generator().manual_seed(3)))
