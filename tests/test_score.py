"""Exact scores: against autograd of their log-densities and against each other (closed forms)."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore, MixtureScore
from mempkg.data import digits
from mempkg.nets import MLPScoreNet
from mempkg.score import NetworkScore, SphereScore, score_jvp

SDE = VPSDE()
F64 = torch.float64


def autograd_score(model, x, t):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model.log_prob(x, t).sum(), x)[0]


def random_times(n, g, low=0.01):
    return low + (1 - low) * torch.rand(n, generator=g, dtype=F64)


@pytest.mark.parametrize("shape", [(3,), (1, 4, 4), (2, 3, 2)])
def test_empirical_score_matches_autograd_for_any_shape(shape):
    g = torch.Generator().manual_seed(1)
    train = torch.randn(7, *shape, generator=g, dtype=F64)
    model = EmpiricalScore(train, SDE)
    x = torch.randn(32, *shape, generator=g, dtype=F64)
    t = random_times(32, g)
    assert torch.allclose(model(x, t), autograd_score(model, x, t), rtol=1e-9, atol=1e-9)


def test_empirical_log_prob_is_the_gaussian_mixture():
    g = torch.Generator().manual_seed(2)
    train = torch.randn(4, 2, generator=g, dtype=F64)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    t = 0.3
    comps = torch.distributions.MultivariateNormal(SDE.alpha(t) * train, SDE.v(t) * torch.eye(2, dtype=F64))
    ref = torch.logsumexp(comps.log_prob(x[:, None]), dim=1) - math.log(4)
    assert torch.allclose(EmpiricalScore(train, SDE).log_prob(x, t), ref, rtol=1e-12)


def test_chunking_does_not_change_the_score():
    train = digits(300, seed=0, dtype=F64)
    x = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (1e-3, 0.05, 0.7):
        full = EmpiricalScore(train, SDE)(x, t)
        chunked = EmpiricalScore(train, SDE, chunk_size=17)(x, t)
        assert torch.allclose(full, chunked, rtol=1e-10, atol=1e-10)


def test_all_digits_by_a_batch_of_512_fits_and_weights_sum_to_one():
    train = digits(dtype=torch.float32)
    model = EmpiricalScore(train, SDE, chunk_size=256)
    x = torch.randn(512, 1, 8, 8)
    s = model(x, 0.2)
    assert s.shape == x.shape and torch.isfinite(s).all()
    w = model.posterior_weights(x[:8], 0.2)
    assert w.shape == (8, len(train)) and torch.allclose(w.sum(1), torch.ones(8))


def test_single_point_empirical_equals_zero_covariance_gaussian():
    y = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    emp = EmpiricalScore(y, SDE)
    gauss = GaussianScore(y[0], torch.zeros(3, 3, dtype=F64), SDE)
    x = torch.randn(10, 3, dtype=F64)
    for t in (1e-3, 0.5, 1.0):
        assert torch.allclose(emp(x, t), (SDE.alpha(t) * y - x) / SDE.v(t), rtol=1e-12)
        assert torch.allclose(emp(x, t), gauss(x, t), rtol=1e-10)
        assert torch.allclose(emp.log_prob(x, t), gauss.log_prob(x, t), rtol=1e-10)


def test_posterior_mean_at_training_point_small_t_is_that_point():
    train = digits(20, seed=1, dtype=F64)
    model = EmpiricalScore(train, SDE)
    t = 1e-3
    x = SDE.alpha(t) * train
    assert torch.allclose(model.posterior_mean(x, t), train, atol=1e-12)


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_gaussian_score_matches_autograd_with_rank_deficient_covariance(rank):
    g = torch.Generator().manual_seed(rank)
    a = torch.randn(3, rank, generator=g, dtype=F64)
    mean = torch.randn(3, generator=g, dtype=F64)
    model = GaussianScore(mean, a @ a.T, SDE)
    assert model.rank == rank
    x = torch.randn(20, 3, generator=g, dtype=F64)
    t = random_times(20, g)
    assert torch.allclose(model(x, t), autograd_score(model, x, t), rtol=1e-9, atol=1e-9)


def test_gaussian_score_closed_form_and_log_prob():
    cov = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    model = GaussianScore(mean, cov, SDE)
    x = torch.randn(8, 2, dtype=F64)
    t = 0.2
    S = SDE.alpha(t) ** 2 * cov + SDE.v(t) * torch.eye(2, dtype=F64)
    assert torch.allclose(model(x, t), -(x - SDE.alpha(t) * mean) @ torch.linalg.inv(S), rtol=1e-10)
    ref = torch.distributions.MultivariateNormal(SDE.alpha(t) * mean, S).log_prob(x)
    assert torch.allclose(model.log_prob(x, t), ref, rtol=1e-10)


def test_gaussian_flow_map_composes_and_solves_the_ode():
    a = torch.tensor([[1.0], [0.5]], dtype=F64)
    model = GaussianScore(torch.tensor([0.3, 0.1], dtype=F64), a @ a.T, SDE)
    x = torch.randn(16, 2, dtype=F64)
    direct = model.flow_map(x, 0.9, 0.01)
    via = model.flow_map(model.flow_map(x, 0.9, 0.3), 0.3, 0.01)
    assert torch.allclose(direct, via, rtol=1e-12, atol=1e-12)
    # d/dt flow_map(x, t0, t) = ode_drift at t (central difference)
    t, h = 0.4, 1e-6
    y = model.flow_map(x, 0.9, t)
    fd = (model.flow_map(x, 0.9, t + h) - model.flow_map(x, 0.9, t - h)) / (2 * h)
    assert torch.allclose(fd, SDE.ode_drift(model, y, t), rtol=1e-6, atol=1e-7)


def test_gaussian_sample_has_the_marginal_moments():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
    model = GaussianScore(torch.tensor([1.0, 0.0], dtype=F64), cov, SDE)
    x = model.sample(100_000, 0.2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), model.mean_t(0.2), atol=0.015)
    assert torch.allclose(torch.cov(x.T), model.cov_t(0.2), atol=0.02)


def test_mixture_score_matches_autograd_and_reduces_to_components():
    g = torch.Generator().manual_seed(3)
    comps = [GaussianScore(torch.randn(2, generator=g, dtype=F64), torch.diag(torch.rand(2, generator=g, dtype=F64)), SDE) for _ in range(3)]
    mix = MixtureScore(comps, weights=[0.2, 0.5, 0.3])
    x = torch.randn(25, 2, generator=g, dtype=F64)
    t = random_times(25, g)
    assert torch.allclose(mix(x, t), autograd_score(mix, x, t), rtol=1e-9, atol=1e-9)
    assert torch.allclose(MixtureScore(comps[:1])(x, t), comps[0](x, t))
    r = mix.responsibilities(x, t)
    assert torch.allclose(r.sum(1), torch.ones(25, dtype=F64))


def test_mixture_of_points_equals_empirical_score():
    train = torch.randn(4, 2, dtype=F64)
    mix = MixtureScore([GaussianScore(y, torch.zeros(2, 2, dtype=F64), SDE) for y in train])
    emp = EmpiricalScore(train, SDE)
    x = torch.randn(9, 2, dtype=F64)
    assert torch.allclose(mix(x, 0.1), emp(x, 0.1), rtol=1e-9, atol=1e-9)


def test_score_works_in_float32():
    train = digits(10, dtype=torch.float32)
    s = EmpiricalScore(train, SDE)(torch.randn(4, 1, 8, 8), 0.5)
    assert s.dtype == torch.float32


def test_errors_name_the_parameter():
    train = torch.zeros(3, 2)
    model = EmpiricalScore(train, SDE)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        model(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="t must"):
        model(torch.zeros(2, 2), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="train"):
        EmpiricalScore(torch.zeros(0, 2), SDE)
    with pytest.raises(ValueError, match="chunk_size"):
        EmpiricalScore(train, SDE, chunk_size=0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianScore(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]), SDE)
    with pytest.raises(ValueError, match="cov must have shape"):
        GaussianScore(torch.zeros(2), torch.eye(3), SDE)
    with pytest.raises(ValueError, match="weights"):
        MixtureScore([GaussianScore(torch.zeros(2), torch.eye(2), SDE)], weights=[-1.0])


def test_score_jvp_follows_per_example_times():
    torch.manual_seed(0)
    score = NetworkScore(MLPScoreNet((3,), hidden=8, n_blocks=1), SDE, "eps")
    x, t = torch.randn(2, 3), torch.tensor([0.2, 0.7])
    tangents = torch.randn(2, 4, 3)
    out = score_jvp(score, x, t, tangents)
    single = score_jvp(score, x[1:], 0.7, tangents[1:])
    assert out.shape == (2, 4, 3) and torch.allclose(out[1:], single, atol=1e-5)


@pytest.mark.parametrize("k,ambient", [(1, 2), (1, 5), (2, 3), (2, 6)])
@pytest.mark.parametrize("t", [0.01, 0.2, 0.9])
def test_sphere_score_is_the_gradient_of_its_log_density(k, ambient, t):
    model = SphereScore(k, ambient, SDE, radius=1.3)
    x = model.sample(16, t, generator=torch.Generator().manual_seed(k + ambient), dtype=F64)
    assert torch.allclose(model(x, t), autograd_score(model, x, t), rtol=1e-8, atol=1e-8)


def test_sphere_log_density_integrates_to_one_on_the_circle():
    """log_prob of the noised circle in R^2 is a density: its integral over a wide grid is 1."""
    model = SphereScore(1, 2, SDE)
    g = torch.linspace(-4, 4, 801, dtype=F64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = model.log_prob(pts, 0.3).exp().sum().item() * (g[1] - g[0]).item() ** 2
    assert abs(mass - 1.0) < 1e-4
