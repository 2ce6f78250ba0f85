"""Volume growth (seed 000, Eq. 13, Algorithm 1): closed forms first, then relations, then errors."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore, MixtureScore
from mempkg.data import digits
from mempkg.nets import MLPScoreNet
from mempkg.score import NetworkScore
from mempkg.score import score_jvp
from mempkg.volume import volume_growth

SDE = VPSDE()
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", ["paper", "qr", "jvp"])
@pytest.mark.parametrize("n_axes", [1, 5, 64])
def test_single_point_closed_form(method, n_axes):
    """One training point: log l_t = N/2 log(v(t) / v(t_start)) at every step (Eq. 12)."""
    y = digits(1, seed=3, dtype=F64)
    res = volume_growth(EmpiricalScore(y, SDE), y, SDE, n_axes=n_axes, n_steps=400, method=method,
                        ode_method="heun", generator=gen())
    closed = n_axes / 2 * torch.log(SDE.v(res.times) / SDE.v(1e-3))
    assert res.log_growth.shape == (1, 400)
    assert torch.allclose(res.log_growth[0], closed, rtol=2e-3)


def test_uniform_euler_grid_of_the_paper_is_biased_and_log_grid_is_not():
    y = digits(1, dtype=F64)
    closed = 64 / 2 * math.log(SDE.v(1.0) / SDE.v(1e-3))
    uniform = volume_growth(EmpiricalScore(y, SDE), y, SDE, n_axes=64, n_steps=1000, grid="uniform", generator=gen())
    log = volume_growth(EmpiricalScore(y, SDE), y, SDE, n_axes=64, n_steps=1000, grid="log", generator=gen())
    assert 0.01 < uniform.total.item() / closed - 1 < 0.025        # +1.7 %, as in the docstring
    assert abs(log.total.item() / closed - 1) < 0.002              # +0.13 %


def small_mixture():
    g = gen(5)
    comps = [GaussianScore(2 * torch.randn(3, generator=g, dtype=F64),
                           torch.diag(0.05 + torch.rand(3, generator=g, dtype=F64)), SDE) for _ in range(4)]
    return MixtureScore(comps, weights=[0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("method", ["qr", "jvp"])
def test_liouville_full_volume_growth_is_a_log_likelihood_ratio(method):
    """With N = d: log l = log p_{t_start}(x0) - log p_{t_end}(x(t_end)), an independent density."""
    mix = small_mixture()
    x0 = mix.sample(6, 1e-3, generator=gen(1))
    res = volume_growth(mix, x0, SDE, n_axes=3, sigma=1e-5, n_steps=400, method=method, ode_method="heun",
                        generator=gen(2))
    ratio = mix.log_prob(x0, 1e-3) - mix.log_prob(res.x_end, 1.0)
    assert torch.allclose(res.total, ratio, atol=2e-3)


def test_paper_is_at_least_qr_and_equal_for_one_axis():
    """Hadamard: Gram-Schmidt lengths never exceed the raw lengths (exact for one step from the
    same axes); over many steps the totals keep the order. For N = 1 the two coincide."""
    mix = small_mixture()
    x0 = mix.sample(8, 1e-3, generator=gen(1))
    for n_steps in (1, 100):
        out = {m: volume_growth(mix, x0, SDE, n_axes=3, sigma=0.05, n_steps=n_steps, method=m, generator=gen(4))
               for m in ("paper", "qr")}
        assert (out["paper"].total >= out["qr"].total - 1e-12).all()
    assert (out["paper"].total > out["qr"].total).all()
    one = {m: volume_growth(mix, x0, SDE, n_axes=1, n_steps=100, method=m, generator=gen(4)) for m in ("paper", "qr")}
    assert torch.allclose(one["paper"].log_growth, one["qr"].log_growth, atol=1e-10)


@pytest.mark.parametrize("method", ["paper", "qr"])
def test_float32_agrees_with_float64_far_from_the_data(method):
    """At |x| = 370 float32 rounds centre + offset by ~2e-5 per coordinate; dividing by the
    intended sigma instead of the realised offset put float32 +0.55 above float64 here."""
    totals = []
    for dtype in (torch.float32, F64):
        model = GaussianScore(torch.zeros(64, dtype=dtype), 0.3 * torch.eye(64, dtype=dtype), SDE)
        x0 = torch.randn(2, 64, generator=gen(1), dtype=F64)
        x0 = (370 * x0 / x0.norm(dim=1, keepdim=True)).to(dtype)
        res = volume_growth(model, x0, SDE, n_axes=16, n_steps=1000, grid="uniform", method=method,
                            generator=gen())
        totals.append(res.total.double())
    assert (totals[0] - totals[1]).abs().max().item() < 0.03


def test_qr_tends_to_jvp_as_sigma_shrinks():
    mix = small_mixture()
    x0 = mix.sample(4, 1e-3, generator=gen(1))
    jvp = volume_growth(mix, x0, SDE, n_axes=2, n_steps=50, method="jvp", generator=gen(7)).total
    gaps = [(volume_growth(mix, x0, SDE, n_axes=2, sigma=s, n_steps=50, method="qr", generator=gen(7)).total - jvp).abs().max().item()
            for s in (1e-1, 1e-2, 1e-3)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_analytic_jvp_of_exact_scores_matches_autodiff():
    train = digits(12, dtype=F64)
    emp = EmpiricalScore(train, SDE)
    x = SDE.perturb(train[:3], 0.05, generator=gen(0))
    tangents = torch.randn(3, 4, 1, 8, 8, generator=gen(1), dtype=F64)
    xr = x[:, None].expand(3, 4, 1, 8, 8).reshape(12, 1, 8, 8)
    _, ref = torch.func.jvp(lambda z: emp(z, 0.05), (xr,), (tangents.reshape(12, 1, 8, 8),))
    assert torch.allclose(emp.jvp(x, 0.05, tangents), ref.reshape(tangents.shape), rtol=1e-8, atol=1e-8)
    gauss = GaussianScore(torch.zeros(3, dtype=F64), torch.diag(torch.tensor([1.0, 0.2, 0.0], dtype=F64)), SDE)
    xg, tg = torch.randn(2, 3, dtype=F64), torch.randn(2, 5, 3, dtype=F64)
    assert torch.allclose(gauss.jvp(xg, 0.3, tg), score_jvp(lambda z, t: gauss(z, t), xg, 0.3, tg), rtol=1e-10)


def test_network_scores_work_with_every_method():
    torch.manual_seed(0)
    net = MLPScoreNet((1, 4, 4), hidden=16, n_blocks=1)
    score = NetworkScore(net, SDE, "x0")
    x0 = torch.randn(3, 1, 4, 4)
    out = {m: volume_growth(score, x0, SDE, n_axes=4, sigma=0.05, n_steps=5, method=m, generator=gen()) for m in ("paper", "qr", "jvp")}
    for res in out.values():
        assert res.log_growth.shape == (3, 5) and torch.isfinite(res.log_growth).all()
    assert (out["paper"].total >= out["qr"].total - 1e-4).all()


def test_batched_equals_one_point_at_a_time_and_is_deterministic():
    train = digits(8, dtype=F64)
    score = EmpiricalScore(train, SDE)
    x0 = train[:4]
    batched = volume_growth(score, x0, SDE, n_axes=6, n_steps=30, generator=gen(3))
    again = volume_growth(score, x0, SDE, n_axes=6, n_steps=30, generator=gen(3))
    chunked = volume_growth(score, x0, SDE, n_axes=6, n_steps=30, generator=gen(3), batch_size=1)
    assert torch.equal(batched.log_growth, again.log_growth)
    assert torch.allclose(batched.log_growth, chunked.log_growth, rtol=1e-10, atol=1e-10)
    assert batched.at(30).shape == (4,) and torch.equal(batched.at(30), batched.total)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_axes=65), "n_axes must be at most"),
    (dict(n_axes=0), "n_axes"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(t_start=0.5, t_end=0.5), "t_start must be smaller"),
    (dict(t_start=0.0), "t_start"),
    (dict(method="lyapunov"), "method"),
    (dict(n_steps=0), "n_steps"),
    (dict(grid="cosine"), "grid"),
])
def test_bad_arguments_raise_naming_the_parameter(kwargs, name):
    y = digits(2, dtype=F64)
    with pytest.raises(ValueError, match=name):
        volume_growth(EmpiricalScore(y, SDE), y, SDE, **({"n_steps": 3, "n_axes": 2} | kwargs))


def test_batched_paper_method_equals_the_literal_algorithm():
    from mempkg.volume import volume_growth_loop

    train = digits(10, dtype=F64)
    score = EmpiricalScore(train, SDE)
    x0 = SDE.perturb(train[:3], 0.01, generator=gen(0))
    batched = volume_growth(score, x0, SDE, n_axes=5, n_steps=20, generator=gen(9), method="paper")
    literal = volume_growth_loop(score, x0, SDE, n_axes=5, n_steps=20, generator=gen(9))
    assert torch.allclose(batched.log_growth, literal, rtol=1e-9, atol=1e-9)
    on_paper_grid = volume_growth(score, x0, SDE, n_axes=5, n_steps=20, generator=gen(9), grid="paper")
    assert abs(on_paper_grid.times[-1].item() - (1 + 0.999 / 19)) < 1e-12
    assert torch.allclose(on_paper_grid.log_growth, volume_growth_loop(score, x0, SDE, n_axes=5, n_steps=20,
                                                                       generator=gen(9), grid="paper"))
