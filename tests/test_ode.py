"""ODE integration: the single-point flow (seed 000 Eq. 12), the Gaussian flow map, orders, errors."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore, integrate
from mempkg.ode import IntegrationError, ode_step, ode_step_jvp, sde_step, time_grid
from mempkg.score import MixtureScore

SDE = VPSDE()
F64 = torch.float64


def circle_flow_error(method, grid, steps, t0=1e-3, direction_tol=0.1):
    """Relative error of the final radius of a circle of radius sqrt(v(t0)) carried to t = 1."""
    y = torch.tensor([[1.0, 0.5]], dtype=F64)
    ang = torch.linspace(0, 2 * math.pi, 65, dtype=F64)[:-1]
    c = torch.stack([ang.cos(), ang.sin()], 1)
    x0 = SDE.alpha(t0) * y + SDE.sigma(t0) * c
    x1 = integrate(EmpiricalScore(y, SDE), x0, SDE, t0, 1.0, steps, method=method, grid=grid)
    radius = (x1 - SDE.alpha(1.0) * y).norm(dim=1)
    direction = torch.nn.functional.normalize(x1 - SDE.alpha(1.0) * y, dim=1)
    assert torch.allclose(direction, c, atol=direction_tol), "Eq. 12: the direction of C never changes"
    return (radius.mean() / SDE.sigma(1.0) - 1).item()


@pytest.mark.parametrize("method,grid,steps,bound", [
    # the table in mempkg.ode's docstring, with a margin
    ("euler", "uniform", 1000, 0.09),
    ("euler", "log", 1000, 0.007),
    ("euler", "log", 200, 0.035),
    ("heun", "log", 100, 0.003),
    ("heun", "log", 1000, 5e-5),
])
def test_single_point_flow_matches_eq12(method, grid, steps, bound):
    err = circle_flow_error(method, grid, steps, direction_tol=bound)
    assert abs(err) < bound


def test_log_grid_beats_uniform_grid():
    assert abs(circle_flow_error("euler", "log", 1000)) < abs(circle_flow_error("euler", "uniform", 1000)) / 5


def test_heun_is_second_order_on_the_gaussian_flow():
    a = torch.tensor([[0.8], [0.6]], dtype=F64)
    model = GaussianScore(torch.tensor([1.0, -0.5], dtype=F64), a @ a.T, SDE)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = model.flow_map(x, 1.0, 1e-3)
    errs = {n: (integrate(model, x, SDE, 1.0, 1e-3, n, method="heun") - exact).abs().max().item() for n in (200, 400)}
    assert 3.0 < errs[200] / errs[400] < 5.0
    errs = {n: (integrate(model, x, SDE, 1.0, 1e-3, n, method="euler") - exact).abs().max().item() for n in (200, 400)}
    assert 1.6 < errs[200] / errs[400] < 2.4


def test_forward_then_backward_returns_to_the_start():
    model = GaussianScore(torch.zeros(3, dtype=F64), torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=F64)), SDE)
    x = torch.randn(10, 3, dtype=F64)
    there = integrate(model, x, SDE, 0.01, 0.8, 400, method="heun")
    back = integrate(model, there, SDE, 0.8, 0.01, 400, method="heun")
    assert torch.allclose(back, x, atol=1e-4)


def test_trajectory_holds_every_state():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(5, 2, dtype=F64)
    traj = integrate(model, x, SDE, 0.1, 0.9, 7, return_trajectory=True)
    assert traj.states.shape == (8, 5, 2) and traj.times.shape == (8,)
    assert torch.equal(traj.states[0], x)
    assert traj.times[0].item() == 0.1 and traj.times[-1].item() == 0.9


def test_explicit_times_and_time_grid():
    g = time_grid(1.0, 1e-3, 10)
    assert g[0].item() == 1.0 and g[-1].item() == 1e-3
    assert torch.allclose(g[1:] / g[:-1], torch.full((10,), 10 ** (-0.3), dtype=F64))
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(3, 2, dtype=F64)
    assert torch.allclose(integrate(model, x, SDE, 1.0, 1e-3, 10, times=g), integrate(model, x, SDE, 1.0, 1e-3, 10))


def test_the_paper_grid_takes_steps_of_exactly_1e_3_to_1_001():
    """Seed 000's code: Euler from each of linspace(1e-3, 1, 1000) with dt = 1e-3."""
    taus = time_grid(1e-3, 1.0, 1000, "paper")
    assert taus.shape == (1001,) and taus[0].item() == 1e-3
    assert torch.allclose(taus.diff(), torch.full((1000,), 1e-3, dtype=torch.float64), rtol=0, atol=1e-15)
    assert abs(taus[-1].item() - 1.001) < 1e-14 and abs(taus[-2].item() - 1.0) < 1e-14
    uniform = time_grid(1e-3, 1.0, 1000, "uniform")
    assert abs(uniform.diff()[0].item() - 0.999e-3) < 1e-15 and uniform[-1].item() == 1.0
    with pytest.raises(ValueError, match="t_start"):
        time_grid(1.0, 1e-3, 1000, "paper")
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(1e-3, 1.0, 1, "paper")


def test_nan_is_reported_with_step_and_time():
    def bad_score(x, t):
        return x * (float("nan") if t < 0.5 else 1.0)

    with pytest.raises(IntegrationError, match=r"step 3 \(t = 0\.1\)") as info:
        integrate(bad_score, torch.ones(4, 2), SDE, 0.9, 0.1, 3, grid="uniform")
    assert "4 of 4 trajectories" in str(info.value)


@pytest.mark.parametrize("kwargs,name", [
    (dict(t_start=0.0), "t_start"),
    (dict(t_end=1.5), "t_end"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=2.5), "n_steps"),
    (dict(method="rk4"), "method"),
    (dict(grid="cosine"), "grid"),
])
def test_bad_arguments_raise_naming_the_parameter(kwargs, name):
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    args = dict(t_start=0.5, t_end=0.1, n_steps=5) | kwargs
    with pytest.raises(ValueError, match=name):
        integrate(model, torch.zeros(3, 2), SDE, **args)


def test_non_monotone_times_are_refused():
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    with pytest.raises(ValueError, match="monotone"):
        integrate(model, torch.zeros(3, 2), SDE, 0.5, 0.1, 2, times=torch.tensor([0.5, 0.6, 0.1]))


def test_ode_step_rejects_unknown_methods():
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    with pytest.raises(ValueError, match="method"):
        ode_step(model, torch.zeros(1, 2), SDE, 0.5, 0.4, method="bogus")


def test_the_tangent_step_is_the_derivative_of_the_step():
    """ode_step_jvp's tangents equal central finite differences of ode_step (Euler and Heun)."""
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    model = MixtureScore([GaussianScore(torch.tensor([1.0, 0.0], dtype=F64), cov, SDE),
                          EmpiricalScore(torch.tensor([[0.0, 1.0], [-1.0, -1.0]], dtype=F64), SDE)])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    u = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    for method in ("euler", "heun"):
        x_new, u_new = ode_step_jvp(model, x, SDE, 0.3, 0.35, u, method)
        assert torch.equal(x_new, ode_step(model, x, SDE, 0.3, 0.35, method))
        for j in range(2):
            h = 1e-6
            fd = (ode_step(model, x + h * u[:, j], SDE, 0.3, 0.35, method)
                  - ode_step(model, x - h * u[:, j], SDE, 0.3, 0.35, method)) / (2 * h)
            assert torch.allclose(u_new[:, j], fd, atol=1e-7)


def test_the_old_argument_order_still_works_with_a_warning():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(3, 2, dtype=F64)
    new = integrate(model, x, SDE, 0.9, 0.1, 5)
    with pytest.warns(DeprecationWarning, match="integrate"):
        old = integrate(SDE, model, x, 0.9, 0.1, 5)
    with pytest.warns(DeprecationWarning, match="t_start"), pytest.warns(DeprecationWarning, match="t_end"):
        renamed = integrate(model, x, SDE, t0=0.9, t1=0.1, n_steps=5)
    assert torch.equal(new, old) and torch.equal(new, renamed)
    with pytest.warns(DeprecationWarning, match="ode_step"):
        assert torch.equal(ode_step(SDE, model, x, 0.5, 0.4), ode_step(model, x, SDE, 0.5, 0.4))


def test_forward_and_reverse_sde_steps_use_the_drifts_of_the_sde():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(4, 2, dtype=F64)
    z = torch.randn(4, 2, dtype=F64)
    fwd = sde_step(None, x, SDE, 0.2, 0.25, z)
    assert torch.allclose(fwd, x + 0.05 * SDE.drift(x, 0.2) + SDE.diffusion(0.2) * math.sqrt(0.05) * z)
    rev = sde_step(model, x, SDE, 0.25, 0.2, z)
    drift = SDE.drift(x, 0.25) - SDE.beta(0.25) * model(x, 0.25)
    assert torch.allclose(rev, x - 0.05 * drift + SDE.diffusion(0.25) * math.sqrt(0.05) * z)
    assert torch.allclose(SDE.reverse_drift(model, x, 0.3, probability_flow=True), SDE.ode_drift(model, x, 0.3))
