"""Integrating the probability-flow ODE of the VP-SDE (seed 000, Eqs. 8-9).

``integrate`` runs ``dx/dt = -beta(t)/2 (x + s(x, t))`` from ``t_start`` to ``t_end`` in either
direction: data to noise (``t_start < t_end``, the direction of seed 000's Algorithm 1) or noise to
data (``t_start > t_end``, sampling). Two explicit schemes are offered, Euler (first order, the one
used by seed 000's code) and Heun (second order, one extra score call per step).

This module owns every integration step of the package: :func:`ode_step` (the probability-flow
ODE), :func:`ode_step_jvp` (the same step and its derivative applied to tangent vectors, which
volume growth pushes) and :func:`sde_step` (Euler-Maruyama for the forward and the reverse SDE).
The drifts they step come from :class:`mempkg.sde.VPSDE`; the samplers of
:mod:`mempkg.sampling` and the estimators of :mod:`mempkg.volume` iterate them.

Step sizes. Near t = 0 the dynamics are stiff: the exact score of data concentrated on points or
subspaces varies like ``1/v(t) ~ 1/(beta_min t)``, so the local rate is ``beta(t) / (2 v(t)) ~ 1/(2t)``.
On a uniform grid the first steps are far too long; the default ``grid="log"`` spaces the times
geometrically, which makes every step a fixed fraction of the local time scale. Measured on the
single-point flow of seed 000 Eq. 12 (a circle of radius sqrt(v) around the point, carried from
t = 1e-3 to 1; ``tests/test_ode.py`` checks these bounds), the relative error of the final radius:

==========  ========  =====  =======
method      grid      steps  error
==========  ========  =====  =======
euler       uniform   1000   +7.9 %
euler       log       1000   +0.6 %
euler       log        200   +2.9 %
heun        uniform   1000   +1.9 %
heun        log        100   +0.2 %
heun        log       1000   2e-5
==========  ========  =====  =======

In log-volume terms (the volume growth of chapter 3) the uniform Euler grid is 1.7 % off per axis
at 1,000 steps, the log grid 0.13 %. Seed 000's code does not use ``"uniform"`` exactly: it takes
1,000 Euler steps of exactly ``1e-3`` from ``t = 1e-3``, ending at ``t = 1.001``
(``grid="paper"``; ``"uniform"`` takes steps of ``0.999e-3`` and ends at 1).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from tqdm import tqdm

from ._checks import (check_choice, check_positive_int, check_time, legacy_sde_first, no_other_kwargs,
                      renamed_argument)
from .score import score_jvp
from .sde import VPSDE

__all__ = ["integrate", "ode_step", "ode_step_jvp", "sde_step", "time_grid", "Trajectory", "IntegrationError",
           "check_finite"]

METHODS = ("euler", "heun")
GRIDS = ("log", "uniform", "paper")


class IntegrationError(FloatingPointError):
    """Raised when the state of an ODE integration stops being finite."""


class Trajectory(NamedTuple):
    """The states of an integration at every grid time.

    times : tensor ``(n_steps + 1,)``; states : tensor ``(n_steps + 1, batch, *data_shape)``.
    """

    times: torch.Tensor
    states: torch.Tensor


def time_grid(t_start: float, t_end: float, n_steps: int, grid: str = "log", dtype=torch.float64) -> torch.Tensor:
    """Times ``t_start = tau_0, ..., tau_n`` of an integration with ``n_steps`` steps.

    Parameters
    ----------
    t_start, t_end : float in (0, 1]
        Start and end; ``t_start > t_end`` integrates backwards in time.
    n_steps : int >= 1
    grid : {"log", "uniform", "paper"}
        ``"log"`` spaces times geometrically (dense near the smaller time, where the exact
        score is stiff); ``"uniform"`` is ``linspace(t_start, t_end, n_steps + 1)``.
        ``"paper"`` is seed 000's code: Euler steps taken *from* each of the ``n_steps`` times
        ``linspace(t_start, t_end, n_steps)``, each of length ``h = (t_end - t_start) /
        (n_steps - 1)``, so the grid ends one step past ``t_end``. For ``t_start = 1e-3``,
        ``t_end = 1``, 1,000 steps: steps of exactly ``1e-3``, ending at ``t = 1.001``
        (``"uniform"`` takes steps of ``0.999e-3`` and ends at 1). Forward in time only,
        ``n_steps >= 2``; the drift is never evaluated past ``t_end`` by Euler (Heun's
        corrector evaluates it once at ``t_end + h``).

    Returns
    -------
    tensor of shape ``(n_steps + 1,)``: the endpoints exactly ``t_start`` and ``t_end`` (``"log"``,
    ``"uniform"``) or ``t_start`` and ``t_end + h`` (``"paper"``).
    """
    t_start = check_time(t_start, "t_start")
    t_end = check_time(t_end, "t_end")
    n_steps = check_positive_int(n_steps, "n_steps")
    check_choice(grid, "grid", GRIDS)
    if grid == "paper":
        if not t_start < t_end:
            raise ValueError(f"grid='paper' runs forward in time: t_start must be below t_end = {t_end}, "
                             f"got {t_start}")
        if n_steps < 2:
            raise ValueError(f"grid='paper' needs n_steps >= 2 (its step is (t_end - t_start) / (n_steps - 1)), "
                             f"got {n_steps}")
        h = (t_end - t_start) / (n_steps - 1)
        return t_start + h * torch.arange(n_steps + 1, dtype=dtype)
    if grid == "uniform":
        taus = torch.linspace(t_start, t_end, n_steps + 1, dtype=dtype)
    else:
        taus = torch.exp(torch.linspace(math.log(t_start), math.log(t_end), n_steps + 1, dtype=dtype))
    taus[0], taus[-1] = t_start, t_end
    return taus


def check_finite(x: torch.Tensor, step: int, t: float, method: str) -> None:
    """Raise :class:`IntegrationError` naming the step and time when ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
        raise IntegrationError(
            f"the {method} integration produced NaN/Inf at step {step} (t = {t:.6g}) in "
            f"{bad.numel()} of {x.shape[0]} trajectories (first: index {bad[0].item()}); "
            "try more steps, grid='log' or float64"
        )


def ode_step(score, x: torch.Tensor, sde: VPSDE, ta: float, tb: float, method: str = "euler") -> torch.Tensor:
    """One step of the probability-flow ODE from time ``ta`` to ``tb`` (either direction).

    ``"euler"``: ``x + h f(x, ta)``; ``"heun"``: ``x + h/2 (f(x, ta) + f(x + h f(x, ta), tb))``,
    with ``h = tb - ta`` and ``f`` the drift of Eq. 8 (:meth:`~mempkg.sde.VPSDE.ode_drift`). This is
    the map every integrator in mempkg iterates (:func:`integrate`,
    :func:`mempkg.volume.volume_growth`).
    """
    score, x, sde = legacy_sde_first("ode_step", score, x, sde)
    check_choice(method, "method", METHODS)
    h = tb - ta
    da = sde.ode_drift(score, x, ta)
    if method == "euler":
        return x + h * da
    return x + 0.5 * h * (da + sde.ode_drift(score, x + h * da, tb))


def _ode_drift_jvp(score, x, sde, t, tangents):
    """Derivative of the drift ``-beta/2 (x + s)`` applied to tangents ``(batch, k, ...)``."""
    return -0.5 * sde.beta(t) * (tangents + score_jvp(score, x, t, tangents))


def ode_step_jvp(score, x: torch.Tensor, sde: VPSDE, ta: float, tb: float, tangents: torch.Tensor,
                 method: str = "euler"):
    """The step of :func:`ode_step` and its derivative applied to ``tangents``.

    Returns ``(x_new, tangents_new)`` where ``tangents_new = (d x_new / d x) tangents`` exactly for
    the scheme (the chain rule through Euler's or Heun's formula), with the score's derivative from
    :func:`mempkg.score.score_jvp`. ``tangents`` has shape ``(batch, k, *data_shape)``. Volume
    growth's ``"jvp"`` method (the ``sigma -> 0`` limit of seed 000's Algorithm 1) iterates it.
    """
    check_choice(method, "method", METHODS)
    h = tb - ta
    da = sde.ode_drift(score, x, ta)
    dv = _ode_drift_jvp(score, x, sde, ta, tangents)
    if method == "euler":
        return x + h * da, tangents + h * dv
    x_pred = x + h * da
    v_pred = tangents + h * dv
    return (x + 0.5 * h * (da + sde.ode_drift(score, x_pred, tb)),
            tangents + 0.5 * h * (dv + _ode_drift_jvp(score, x_pred, sde, tb, v_pred)))


def sde_step(score, x: torch.Tensor, sde: VPSDE, ta: float, tb: float, noise: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of the forward (``tb > ta``) or the reverse (``tb < ta``) SDE.

    Forward (seed 000, Eq. 3; ``score`` is not used and may be None):
    ``x + f(x, ta) h + g(ta) sqrt(h) noise`` with ``h = tb - ta``.
    Reverse (Eq. 2 with gamma = 1): ``x - [f - g^2 s](x, ta) h + g(ta) sqrt(h) noise`` with
    ``h = ta - tb``, the drift of :meth:`~mempkg.sde.VPSDE.reverse_drift`. ``noise`` is a standard
    normal draw shaped like ``x``.
    """
    if tb > ta:
        h = tb - ta
        return x + sde.drift(x, ta) * h + sde.diffusion(ta) * math.sqrt(h) * noise
    h = ta - tb
    return x - h * sde.reverse_drift(score, x, ta) + sde.diffusion(ta) * math.sqrt(h) * noise


def integrate(
    score,
    x: torch.Tensor,
    sde: VPSDE,
    t_start: float | None = None,
    t_end: float | None = None,
    n_steps: int | None = None,
    method: str = "euler",
    grid: str = "log",
    times: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    **deprecated,
):
    """Integrate the probability-flow ODE ``dx/dt = -beta(t)/2 (x + score(x, t))`` (Eq. 8).

    Parameters
    ----------
    score : callable ``score(x, t) -> tensor`` shaped like ``x``
    x : tensor, shape ``(batch, *data_shape)``
        State at time ``t_start``.
    sde : VPSDE
    t_start, t_end : float in (0, 1]
        Start and end times; ``t_start < t_end`` maps data to noise, ``t_start > t_end`` noise
        to data.
    n_steps : int >= 1
    method : {"euler", "heun"}
        Explicit Euler (first order) or Heun's predictor-corrector (second order).
    grid : {"log", "uniform", "paper"}
        Spacing of the times (see :func:`time_grid`); ignored when ``times`` is given.
    times : tensor of shape ``(n_steps + 1,)``, optional
        An explicit monotone grid; it overrides ``t_start``, ``t_end`` and ``grid`` (its first and
        last values are the start and end times).
    return_trajectory : bool
        Return every intermediate state as a :class:`Trajectory` instead of the final state.
    progress : bool
        Show a tqdm progress bar over the steps.

    Returns
    -------
    tensor shaped like ``x`` (the state at ``t_end``), or a :class:`Trajectory`.

    Raises
    ------
    IntegrationError
        When a state becomes NaN or infinite; the message names the step and the time.

    Notes
    -----
    The order ``integrate(sde, score, x, t0, t1, ...)`` of versions up to 0.1 still works, with a
    ``DeprecationWarning``.
    """
    score, x, sde = legacy_sde_first("integrate", score, x, sde)
    t_start = renamed_argument(deprecated, "t0", "t_start", "integrate", t_start)
    t_end = renamed_argument(deprecated, "t1", "t_end", "integrate", t_end)
    no_other_kwargs(deprecated, "integrate")
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise ValueError("x must be a tensor of shape (batch, *data_shape)")
    check_choice(method, "method", METHODS)
    if n_steps is None:
        raise ValueError("n_steps must be given (the number of steps)")
    if times is None:
        taus = time_grid(t_start, t_end, n_steps, grid)
    else:
        taus = torch.as_tensor(times, dtype=torch.float64).flatten()
        n_steps = check_positive_int(n_steps, "n_steps")
        if taus.numel() != n_steps + 1:
            raise ValueError(f"times must hold n_steps + 1 = {n_steps + 1} values, got {taus.numel()}")
        check_time(taus, "times")
        diffs = taus.diff()
        if not (bool((diffs > 0).all()) or bool((diffs < 0).all())):
            raise ValueError("times must be strictly monotone")
    taus_list = taus.tolist()
    states = [x] if return_trajectory else None
    for k in tqdm(range(n_steps), disable=not progress, desc=f"ODE ({method})", leave=False):
        x = ode_step(score, x, sde, taus_list[k], taus_list[k + 1], method)
        check_finite(x, k + 1, taus_list[k + 1], method)
        if return_trajectory:
            states.append(x)
    if return_trajectory:
        return Trajectory(taus.to(x.device), torch.stack(states))
    return x
