"""Sampling and simulation with the VP-SDE: forward SDE paths, ODE and SDE samplers.

* :func:`simulate_forward_sde` -- Euler-Maruyama on the forward SDE (seed 000, Eq. 3), to check
  the perturbation kernel (Eq. 4) by Monte Carlo.
* :func:`sample_ode` -- draw noise from the prior and integrate the probability-flow ODE
  (Eq. 8) back to ``t_end``; optionally finish with the denoiser (Tweedie's formula).
* :func:`sample_sde` -- the reverse-time SDE (Eq. 2 with gamma = 1) by Euler-Maruyama.

Every sampler takes ``(score, shape, sde)`` (the package's argument order: the score, the points,
the SDE), so exact scores and trained networks are sampled alike. The steps come from
:mod:`mempkg.ode` (:func:`~mempkg.ode.ode_step`, :func:`~mempkg.ode.sde_step`) and the drifts from
:class:`~mempkg.sde.VPSDE`; nothing here re-derives them. The samplers run without autograd
(``torch.no_grad``): no graph is kept across their steps (a guided score that needs gradients
enables them itself).
"""
from __future__ import annotations

import warnings

import torch
from tqdm import tqdm

from ._checks import as_time_tensor, check_positive_int, check_time, legacy_sde_second, no_other_kwargs, renamed_argument
from ._random import randn
from .ode import Trajectory, check_finite, integrate, sde_step, time_grid
from .sde import VPSDE

__all__ = ["simulate_forward_sde", "forward_marginals", "sample_ode", "sample_sde", "denoise"]


def simulate_forward_sde(
    x0: torch.Tensor,
    sde: VPSDE,
    t_end: float | None = None,
    n_steps: int | None = None,
    t_start: float = 0.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    **deprecated,
):
    """Simulate ``dx = -beta/2 x dt + sqrt(beta) dw`` from ``t_start`` to ``t_end`` (Euler-Maruyama).

    Parameters
    ----------
    x0 : tensor ``(batch, *data_shape)``: the state at ``t_start`` (clean data when ``t_start = 0``)
    sde : VPSDE
    t_end : float in (0, 1], after ``t_start``
    n_steps : int, uniform steps (:func:`mempkg.ode.sde_step`)
    t_start : float in [0, 1), default 0
    generator : torch.Generator, optional

    Returns
    -------
    tensor shaped like ``x0`` (the state at ``t_end``), or a :class:`~mempkg.ode.Trajectory`.
    """
    if hasattr(x0, "perturb"):                     # the order (sde, x0, ...) of versions up to 0.1
        warnings.warn("simulate_forward_sde(sde, x0, ...) is deprecated; call simulate_forward_sde(x0, sde, ...)",
                      DeprecationWarning, stacklevel=2)
        x0, sde = sde, x0
    t_end = renamed_argument(deprecated, "t1", "t_end", "simulate_forward_sde", t_end)
    if "t0" in deprecated:
        t_start = renamed_argument(deprecated, "t0", "t_start", "simulate_forward_sde")
    no_other_kwargs(deprecated, "simulate_forward_sde")
    t_end = check_time(t_end, "t_end")
    t_start = check_time(t_start, "t_start", allow_zero=True)
    if t_start >= t_end:
        raise ValueError(f"t_start must be smaller than t_end = {t_end}, got {t_start}")
    n_steps = check_positive_int(n_steps, "n_steps")
    taus = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64).tolist()
    x = x0
    states = [x] if return_trajectory else None
    for k in range(n_steps):
        noise = randn(x.shape, generator, x.dtype, x.device)
        x = sde_step(None, x, sde, taus[k], taus[k + 1], noise)
        if return_trajectory:
            states.append(x)
    if return_trajectory:
        return Trajectory(torch.tensor(taus, dtype=torch.float64, device=x.device), torch.stack(states))
    return x


def forward_marginals(x0: torch.Tensor, sde: VPSDE, times=None, n_steps: int = 1000,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """States of forward-SDE paths started at ``x0`` (t = 0), recorded at each of ``times``.

    The paths are simulated once, piecewise between consecutive recording times, on a uniform
    grid of ``n_steps`` steps over [0, max(times)] in total; memory holds one state at a time.
    Returns a list of tensors shaped like ``x0``, one per recording time (ascending).
    """
    if hasattr(x0, "perturb"):                     # the order (sde, x0, ...) of versions up to 0.1
        warnings.warn("forward_marginals(sde, x0, ...) is deprecated; call forward_marginals(x0, sde, ...)",
                      DeprecationWarning, stacklevel=2)
        x0, sde = sde, x0
    times = sorted(float(check_time(t, "times")) for t in (times or []))
    if not times:
        raise ValueError("times must hold at least one time")
    n_steps = check_positive_int(n_steps, "n_steps")
    out, x, t_prev = [], x0, 0.0
    for t in times:
        steps = max(1, round(n_steps * (t - t_prev) / times[-1]))
        if t > t_prev:
            x = simulate_forward_sde(x, sde, t, steps, t_start=t_prev, generator=generator)
        out.append(x)
        t_prev = t
    return out


def denoise(score, x: torch.Tensor, sde: VPSDE, t) -> torch.Tensor:
    """Tweedie's formula: ``E[x_0 | x_t = x] = (x + v(t) s(x, t)) / alpha(t)``.

    Exact for exact scores (for :class:`~mempkg.score.EmpiricalScore` it returns the posterior
    mean of the training points); for a network, its estimate of the clean image.
    """
    score, x, sde = legacy_sde_second("denoise", score, x, sde)
    tt = as_time_tensor(t, x)
    return (x + sde.v(tt) * score(x, t)) / sde.alpha(tt)


def _prior_start(sde, shape, t_end=1e-3, generator=None, dtype=torch.float32, device=None, noise=None):
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
    shape,
    sde: VPSDE,
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
    batch_size: int | None = None,
) -> torch.Tensor:
    """Sample by integrating the probability-flow ODE from prior noise at t = 1 to ``t_end``.

    Parameters
    ----------
    score : callable ``score(x, t)``
    shape : tuple ``(n, *data_shape)``
    sde : VPSDE
    n_steps, method, grid : passed to :func:`mempkg.ode.integrate`
    t_end : float in (0, 1): where the integration stops (the ODE is singular at 0)
    final_denoise : bool
        Map the state at ``t_end`` through :func:`denoise` (removes the ``sqrt(v(t_end))``
        residual noise, as samplers of Song et al. 2021 do at their last step).
    noise : tensor of shape ``shape``, optional
        The starting points at t = 1 (drawn from ``N(0, I)`` with ``generator`` when omitted),
        e.g. to see which region of noise space generates which sample.
    batch_size : int, optional
        Integrate this many samples at a time (a large network on a GPU needs it); the noise is
        drawn for all samples first, so the samples are those of one call. None: all at once.

    Returns
    -------
    tensor of shape ``shape``.
    """
    score, shape, sde = legacy_sde_second("sample_ode", score, shape, sde)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    x, t_end = _prior_start(sde, shape, t_end, generator, dtype, device, noise)
    out = []
    for z in x.split(batch_size or max(len(x), 1)):
        z = integrate(score, z, sde, 1.0, t_end, n_steps, method=method, grid=grid, progress=progress)
        out.append(denoise(score, z, sde, t_end) if final_denoise else z)
    return out[0] if len(out) == 1 else torch.cat(out)


@torch.no_grad()
def sample_sde(score, shape, sde: VPSDE, n_steps: int = 500, grid: str = "uniform", final_denoise: bool = True,
               progress: bool = False, **start) -> torch.Tensor:
    """Sample with the reverse-time SDE ``dx = [f - g^2 s] dt + g dw`` (seed 000, Eq. 2, gamma=1).

    Euler-Maruyama (:func:`mempkg.ode.sde_step`) from t = 1 to ``t_end`` on ``n_steps`` steps of
    the chosen grid; the other arguments (``t_end``, ``generator``, ``dtype``, ``device``,
    ``noise``) as in :func:`sample_ode`, whose defaults they share. No chapter of the first part uses it (the
    papers on volume growth and LID sample with the ODE); it stays because SIDE's guided sampler
    (seed 002, Eq. 12) is a reverse SDE, and because the ODE and the SDE differ in how diverse
    their samples are.
    """
    score, shape, sde = legacy_sde_second("sample_sde", score, shape, sde)
    generator = start.get("generator")
    x, t_end = _prior_start(sde, shape, **start)
    taus = time_grid(1.0, t_end, n_steps, grid).tolist()
    for k in tqdm(range(n_steps), disable=not progress, desc="reverse SDE", leave=False):
        noise_k = randn(x.shape, generator, x.dtype, x.device)
        x = sde_step(score, x, sde, taus[k], taus[k + 1], noise_k)
        check_finite(x, k + 1, taus[k + 1], "reverse-SDE")
    return denoise(score, x, sde, t_end) if final_denoise else x
