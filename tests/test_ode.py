"""ODE integration: the single-point flow (seed 000 Eq. 12), the Gaussian flow map, orders, errors."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore, integrate
from mempkg.ode import IntegrationError, time_grid

SDE = VPSDE()
F64 = torch.float64


def circle_flow_error(method, grid, steps, t0=1e-3, direction_tol=0.1):
    """Relative error of the final radius of a circle of radius sqrt(v(t0)) carried to t = 1."""
    y = torch.tensor([[1.0, 0.5]], dtype=F64)
    ang = torch.linspace(0, 2 * math.pi, 65, dtype=F64)[:-1]
    c = torch.stack([ang.cos(), ang.sin()], 1)
    x0 = SDE.alpha(t0) * y + SDE.sigma(t0) * c
    x1 = integrate(SDE, EmpiricalScore(y, SDE), x0, t0, 1.0, steps, method=method, grid=grid)
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
    errs = {n: (integrate(SDE, model, x, 1.0, 1e-3, n, method="heun") - exact).abs().max().item() for n in (200, 400)}
    assert 3.0 < errs[200] / errs[400] < 5.0
    errs = {n: (integrate(SDE, model, x, 1.0, 1e-3, n, method="euler") - exact).abs().max().item() for n in (200, 400)}
    assert 1.6 < errs[200] / errs[400] < 2.4


def test_forward_then_backward_returns_to_the_start():
    model = GaussianScore(torch.zeros(3, dtype=F64), torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=F64)), SDE)
    x = torch.randn(10, 3, dtype=F64)
    there = integrate(SDE, model, x, 0.01, 0.8, 400, method="heun")
    back = integrate(SDE, model, there, 0.8, 0.01, 400, method="heun")
    assert torch.allclose(back, x, atol=1e-4)


def test_trajectory_holds_every_state():
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(5, 2, dtype=F64)
    traj = integrate(SDE, model, x, 0.1, 0.9, 7, return_trajectory=True)
    assert traj.states.shape == (8, 5, 2) and traj.times.shape == (8,)
    assert torch.equal(traj.states[0], x)
    assert traj.times[0].item() == 0.1 and traj.times[-1].item() == 0.9


def test_explicit_times_and_time_grid():
    g = time_grid(1.0, 1e-3, 10)
    assert g[0].item() == 1.0 and g[-1].item() == 1e-3
    assert torch.allclose(g[1:] / g[:-1], torch.full((10,), 10 ** (-0.3), dtype=F64))
    model = GaussianScore(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), SDE)
    x = torch.randn(3, 2, dtype=F64)
    assert torch.allclose(integrate(SDE, model, x, 1.0, 1e-3, 10, times=g), integrate(SDE, model, x, 1.0, 1e-3, 10))


def test_nan_is_reported_with_step_and_time():
    def bad_score(x, t):
        return x * (float("nan") if t < 0.5 else 1.0)

    with pytest.raises(IntegrationError, match=r"step 3 \(t = 0\.1\)") as info:
        integrate(SDE, bad_score, torch.ones(4, 2), 0.9, 0.1, 3, grid="uniform")
    assert "4 of 4 trajectories" in str(info.value)


@pytest.mark.parametrize("kwargs,name", [
    (dict(t0=0.0), "t0"),
    (dict(t1=1.5), "t1"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=2.5), "n_steps"),
    (dict(method="rk4"), "method"),
    (dict(grid="cosine"), "grid"),
])
def test_bad_arguments_raise_naming_the_parameter(kwargs, name):
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    args = dict(t0=0.5, t1=0.1, n_steps=5) | kwargs
    with pytest.raises(ValueError, match=name):
        integrate(SDE, model, torch.zeros(3, 2), **args)


def test_non_monotone_times_are_refused():
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    with pytest.raises(ValueError, match="monotone"):
        integrate(SDE, model, torch.zeros(3, 2), 0.5, 0.1, 2, times=torch.tensor([0.5, 0.6, 0.1]))
