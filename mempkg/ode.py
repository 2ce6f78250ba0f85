"""Integrating the probability-flow ODE of the VP-SDE (seed 000, Eqs. 8-9).

``integrate`` runs ``dx/dt = -beta(t)/2 (x + s(x, t))`` from ``t0`` to ``t1`` in either
direction: data to noise (``t0 < t1``, the direction of seed 000's Algorithm 1) or noise to data
(``t0 > t1``, sampling). Two explicit schemes are offered, Euler (first order, the one used by
seed 000's code) and Heun (second order, one extra score call per step).

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

In log-volume terms (the volume growth of chapter 3) the uniform Euler grid of seed 000's code is
1.7 % off per axis at 1,000 steps, the log grid 0.13 %.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from tqdm import tqdm

from ._checks import check_choice, check_positive_int, check_time
from .sde import VPSDE

__all__ = ["integrate", "ode_step", "time_grid", "Trajectory", "IntegrationError"]

METHODS = ("euler", "heun")
GRIDS = ("log", "uniform")


class IntegrationError(FloatingPointError):
    """Raised when the state of an ODE integration stops being finite."""


class Trajectory(NamedTuple):
    """The states of an integration at every grid time.

    times : tensor ``(n_steps + 1,)``; states : tensor ``(n_steps + 1, batch, *data_shape)``.
    """

    times: torch.Tensor
    states: torch.Tensor


def time_grid(t0: float, t1: float, n_steps: int, grid: str = "log", dtype=torch.float64) -> torch.Tensor:
    """Times ``t0 = tau_0, ..., tau_n = t1`` of an integration with ``n_steps`` steps.

    Parameters
    ----------
    t0, t1 : float in (0, 1]
        Start and end; ``t0 > t1`` integrates backwards in time.
    n_steps : int >= 1
    grid : {"log", "uniform"}
        ``"log"`` spaces times geometrically (dense near the smaller time, where the exact
        score is stiff); ``"uniform"`` is ``linspace(t0, t1)``, the grid of seed 000's code.

    Returns
    -------
    tensor of shape ``(n_steps + 1,)``, with the endpoints exactly ``t0`` and ``t1``.
    """
    t0 = check_time(t0, "t0")
    t1 = check_time(t1, "t1")
    n_steps = check_positive_int(n_steps, "n_steps")
    check_choice(grid, "grid", GRIDS)
    if grid == "uniform":
        taus = torch.linspace(t0, t1, n_steps + 1, dtype=dtype)
    else:
        taus = torch.exp(torch.linspace(math.log(t0), math.log(t1), n_steps + 1, dtype=dtype))
    taus[0], taus[-1] = t0, t1
    return taus


def _check_finite(x: torch.Tensor, step: int, t: float, method: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
        raise IntegrationError(
            f"the {method} integration produced NaN/Inf at step {step} (t = {t:.6g}) in "
            f"{bad.numel()} of {x.shape[0]} trajectories (first: index {bad[0].item()}); "
            "try more steps, grid='log' or float64"
        )


def ode_step(sde: VPSDE, score, x: torch.Tensor, ta: float, tb: float, method: str = "euler") -> torch.Tensor:
    """One step of the probability-flow ODE from time ``ta`` to ``tb`` (either direction).

    ``"euler"``: ``x + h f(x, ta)``; ``"heun"``: ``x + h/2 (f(x, ta) + f(x + h f(x, ta), tb))``,
    with ``h = tb - ta`` and ``f`` the drift of Eq. 8. This is the map every integrator in mempkg
    iterates (:func:`integrate`, :func:`mempkg.volume.volume_growth`).
    """
    check_choice(method, "method", METHODS)
    h = tb - ta
    da = sde.ode_drift(score, x, ta)
    if method == "euler":
        return x + h * da
    return x + 0.5 * h * (da + sde.ode_drift(score, x + h * da, tb))


def integrate(
    sde: VPSDE,
    score,
    x: torch.Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    method: str = "euler",
    grid: str = "log",
    times: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
):
    """Integrate the probability-flow ODE ``dx/dt = -beta(t)/2 (x + score(x, t))`` (Eq. 8).

    Parameters
    ----------
    sde : VPSDE
    score : callable ``score(x, t) -> tensor`` shaped like ``x``
    x : tensor, shape ``(batch, *data_shape)``
        State at time ``t0``.
    t0, t1 : float in (0, 1]
        Start and end times; ``t0 < t1`` maps data to noise, ``t0 > t1`` noise to data.
    n_steps : int >= 1
    method : {"euler", "heun"}
        Explicit Euler (first order) or Heun's predictor-corrector (second order).
    grid : {"log", "uniform"}
        Spacing of the times (see :func:`time_grid`); ignored when ``times`` is given.
    times : tensor of shape ``(n_steps + 1,)``, optional
        An explicit monotone grid; it overrides ``t0``, ``t1`` and ``grid`` (its first and last
        values are the start and end times).
    return_trajectory : bool
        Return every intermediate state as a :class:`Trajectory` instead of the final state.
    progress : bool
        Show a tqdm progress bar over the steps.

    Returns
    -------
    tensor shaped like ``x`` (the state at ``t1``), or a :class:`Trajectory`.

    Raises
    ------
    IntegrationError
        When a state becomes NaN or infinite; the message names the step and the time.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise ValueError("x must be a tensor of shape (batch, *data_shape)")
    check_choice(method, "method", METHODS)
    if times is None:
        taus = time_grid(t0, t1, n_steps, grid)
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
        x = ode_step(sde, score, x, taus_list[k], taus_list[k + 1], method)
        _check_finite(x, k + 1, taus_list[k + 1], method)
        if return_trajectory:
            states.append(x)
    if return_trajectory:
        return Trajectory(taus.to(x.device), torch.stack(states))
    return x
