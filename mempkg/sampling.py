"""Sampling and simulation with the VP-SDE: forward SDE paths, ODE and SDE samplers.

* :func:`simulate_forward_sde` -- Euler-Maruyama on the forward SDE (seed 000, Eq. 3), to check
  the perturbation kernel (Eq. 4) by Monte Carlo.
* :func:`sample_ode` -- draw noise from the prior and integrate the probability-flow ODE
  (Eq. 8) back to ``t_end``; optionally finish with the denoiser (Tweedie's formula).
* :func:`sample_sde` -- the reverse-time SDE (Eq. 2 with gamma = 1) by Euler-Maruyama.

Every sampler takes ``(score, sde)``, so exact scores and trained networks are sampled alike.
The samplers run without autograd (``torch.no_grad``): no graph is kept across their steps.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ._checks import as_time_tensor, check_positive_int, check_time
from .ode import Trajectory, _check_finite, integrate, time_grid
from .sde import VPSDE

__all__ = ["simulate_forward_sde", "forward_marginals", "sample_ode", "sample_sde", "denoise"]


def simulate_forward_sde(
    sde: VPSDE,
    x0: torch.Tensor,
    t1: float,
    n_steps: int,
    t0: float = 0.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
):
    """Simulate ``dx = -beta/2 x dt + sqrt(beta) dw`` from ``t0`` to ``t1`` (Euler-Maruyama).

    Parameters
    ----------
    x0 : tensor ``(batch, *data_shape)``: the state at ``t0`` (clean data when ``t0 = 0``)
    t1 : float in (0, 1], after ``t0``
    n_steps : int, uniform steps
    t0 : float in [0, 1), default 0
    generator : torch.Generator, optional

    Returns
    -------
    tensor shaped like ``x0`` (the state at ``t1``), or a :class:`~mempkg.ode.Trajectory`.
    """
    t1 = check_time(t1, "t1")
    t0 = check_time(t0, "t0", allow_zero=True)
    if t0 >= t1:
        raise ValueError(f"t0 must be smaller than t1 = {t1}, got {t0}")
    n_steps = check_positive_int(n_steps, "n_steps")
    taus = torch.linspace(t0, t1, n_steps + 1, dtype=torch.float64)
    x = x0
    states = [x] if return_trajectory else None
    for k in range(n_steps):
        ta, h = taus[k].item(), (taus[k + 1] - taus[k]).item()
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x - 0.5 * sde.beta(ta) * x * h + math.sqrt(sde.beta(ta) * h) * noise
        if return_trajectory:
            states.append(x)
    return Trajectory(taus.to(x.device), torch.stack(states)) if return_trajectory else x


def forward_marginals(sde: VPSDE, x0: torch.Tensor, times, n_steps: int = 1000, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """States of forward-SDE paths started at ``x0`` (t = 0), recorded at each of ``times``.

    The paths are simulated once, piecewise between consecutive recording times, on a uniform
    grid of ``n_steps`` steps over [0, max(times)] in total; memory holds one state at a time.
    Returns a list of tensors shaped like ``x0``, one per recording time (ascending).
    """
    times = sorted(float(check_time(t, "times")) for t in times)
    if not times:
        raise ValueError("times must hold at least one time")
    n_steps = check_positive_int(n_steps, "n_steps")
    out, x, t_prev = [], x0, 0.0
    for t in times:
        steps = max(1, round(n_steps * (t - t_prev) / times[-1]))
        if t > t_prev:
            x = simulate_forward_sde(sde, x, t, steps, t0=t_prev, generator=generator)
        out.append(x)
        t_prev = t
    return out


def denoise(score, sde: VPSDE, x: torch.Tensor, t) -> torch.Tensor:
    """Tweedie's formula: ``E[x_0 | x_t = x] = (x + v(t) s(x, t)) / alpha(t)``.

    Exact for exact scores (for :class:`~mempkg.score.EmpiricalScore` it returns the posterior
    mean of the training points); for a network, its estimate of the clean image.
    """
    tt = as_time_tensor(t, x)
    return (x + sde.v(tt) * score(x, t)) / sde.alpha(tt)


def _prior_start(sde, shape, t_end, generator, dtype, device, noise=None):
    """Validate ``t_end`` in (0, 1) and return the starting noise at t = 1 (given or drawn)."""
    t_end = check_time(t_end, "t_end")
    if t_end >= 1:
        raise ValueError(f"t_end must be < 1, got {t_end}")
    if noise is None:
        return sde.prior_sample(shape, generator=generator, dtype=dtype, device=device), t_end
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
    return noise, t_end


@torch.no_grad()
def sample_ode(
    score,
    sde: VPSDE,
    shape,
    n_steps: int = 200,
    t_end: float = 1e-3,
    method: str = "heun",
    grid: str = "log",
    final_denoise: bool = True,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device=None,
    progress: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample by integrating the probability-flow ODE from prior noise at t = 1 to ``t_end``.

    Parameters
    ----------
    score : callable ``score(x, t)``
    sde : VPSDE
    shape : tuple ``(n, *data_shape)``
    n_steps, method, grid : passed to :func:`mempkg.ode.integrate`
    t_end : float in (0, 1): where the integration stops (the ODE is singular at 0)
    final_denoise : bool
        Map the state at ``t_end`` through :func:`denoise` (removes the ``sqrt(v(t_end))``
        residual noise, as samplers of Song et al. 2021 do at their last step).
    noise : tensor of shape ``shape``, optional
        The starting points at t = 1 (drawn from ``N(0, I)`` with ``generator`` when omitted),
        e.g. to see which region of noise space generates which sample.

    Returns
    -------
    tensor of shape ``shape``.
    """
    x, t_end = _prior_start(sde, shape, t_end, generator, dtype, device, noise)
    x = integrate(sde, score, x, 1.0, t_end, n_steps, method=method, grid=grid, progress=progress)
    return denoise(score, sde, x, t_end) if final_denoise else x


@torch.no_grad()
def sample_sde(
    score,
    sde: VPSDE,
    shape,
    n_steps: int = 500,
    t_end: float = 1e-3,
    grid: str = "uniform",
    final_denoise: bool = True,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device=None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample with the reverse-time SDE ``dx = [f - g^2 s] dt + g dw`` (seed 000, Eq. 2, gamma=1).

    Euler-Maruyama from t = 1 to ``t_end`` on ``n_steps`` steps of the chosen grid.
    """
    x, t_end = _prior_start(sde, shape, t_end, generator, dtype, device)
    taus = time_grid(1.0, t_end, n_steps, grid).tolist()
    for k in tqdm(range(n_steps), disable=not progress, desc="reverse SDE", leave=False):
        ta, h = taus[k], taus[k] - taus[k + 1]  # h > 0: the step backwards in time
        beta = sde.beta(ta)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + h * (0.5 * beta * x + beta * score(x, ta)) + math.sqrt(beta * h) * noise
        _check_finite(x, k + 1, taus[k + 1], "reverse-SDE")
    return denoise(score, sde, x, t_end) if final_denoise else x
