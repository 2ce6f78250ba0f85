"""Volume growth along the probability-flow ODE (seed 000, Eq. 13 and Algorithm 1).

Hasegawa & Yasuda measure how easily a training image ``x0`` is reproduced by carrying a small
sphere of radius ``sigma`` around it along the probability-flow ODE from data (``t_start``) to
noise (``t_end``) and accumulating how much it stretches. With ``N`` orthogonal offsets
``x^(k) - x^(0)`` re-normalised to ``sigma`` after every step, Eq. 13 reads

    log l_t = sum_steps sum_k [ log |x^(k)_{t+1} - x^(0)_{t+1}| - log |x^(k)_t - x^(0)_t| ].

:func:`volume_growth` computes it three ways:

``"paper"``
    Algorithm 1 as written: the sum of the log stretches of the raw propagated offsets, then
    sort them by length (longest first), Gram-Schmidt, and reset to ``sigma``.
``"qr"``
    The log-volume growth of the parallelepiped spanned by the offsets: the log of the
    Gram-Schmidt lengths ``R_kk`` (a QR decomposition), then reset.
``"jvp"``
    The ``sigma -> 0`` limit of ``"qr"``: orthonormal tangent vectors pushed through the
    derivative of the ODE step (Jacobian-vector products of the score; analytic for exact scores
    with a ``jvp`` method, ``torch.func.jvp`` otherwise), then QR.

How they relate. Gram-Schmidt never lengthens a vector (``R_kk <= |offset_k|``), so
``"paper" >= "qr"`` at every step, with equality for ``N = 1`` (Hadamard's inequality); the
surplus measures how far the flow shears the offsets off orthogonality. ``"qr"`` tends to
``"jvp"`` as ``sigma -> 0``. With ``N = d`` axes ``"qr"``/``"jvp"`` give ``log |det D Phi|`` of the
flow map, which by the instantaneous change of variables equals
``log p_{t_start}(x0) - log p_{t_end}(x(t_end))``: the measure is a log-likelihood ratio
(chapter 3). For a single training point and its exact score every method gives
``N/2 log(v(t) / v(t_start))`` (seed 000, Eq. 12).

Accuracy. Near ``t_start`` the dynamics are stiff (rates ~ ``1/v(t)``). On a uniform grid of
1,000 Euler steps the single-point value is 1.7 % high per axis; on the default log-spaced grid
0.13 % (200 log-spaced steps: about 0.7 %). ``grid="paper", n_steps=1000`` reproduces the paper's
code: 1,000 Euler steps of exactly ``1e-3`` from ``t = 1e-3`` to ``t = 1.001`` (``"uniform"``
steps ``0.999e-3`` and stops at 1; see :func:`mempkg.ode.time_grid`). For exact scores use
float64 (offsets of ``sigma = 1e-4`` break in float32). Everything runs without autograd
(forward-mode Jacobian-vector products do not need it).

Each step's stretch is measured against the offsets as the points hold them, ``|x^(k)_t -
x^(0)_t|`` (``"paper"``, as in Algorithm 1) or their parallelepiped (``"qr"``), not against the
intended ``sigma``: far from the data float32 rounds ``x^(0) + offset`` by ``|x| * 6e-8`` per
coordinate, which lengthens the offset on average. Dividing by ``sigma`` put float32 0.55 above
float64 at ``|x| = 370`` (16 axes, 1,000 steps; network scores at held-out digits travel that
far); now they agree to 0.01 (``tests/test_volume.py``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ._checks import check_choice, check_positive, check_positive_int, check_time
from ._random import randn
from .ode import GRIDS, METHODS, check_finite, ode_step, ode_step_jvp, time_grid
from .score import score_jvp as _score_jvp
from .sde import VPSDE

__all__ = ["volume_growth", "volume_growth_loop", "VolumeGrowth"]

VOLUME_METHODS = ("paper", "qr", "jvp")


@dataclass
class VolumeGrowth:
    """Result of :func:`volume_growth`.

    Attributes
    ----------
    log_growth : tensor ``(batch, n_steps)``
        Cumulative ``log l_t`` after each step (seed 000, Eq. 13); ``log_growth[:, -1]`` is the
        total, the number the paper reports.
    times : tensor ``(n_steps,)``
        The time at the end of each step.
    x_end : tensor ``(batch, *data_shape)``
        Where the centre ``x0`` arrived at ``t_end``.
    method, n_axes, sigma : the settings used.
    """

    log_growth: torch.Tensor
    times: torch.Tensor
    x_end: torch.Tensor
    method: str
    n_axes: int
    sigma: float

    @property
    def total(self) -> torch.Tensor:
        """``log l`` at ``t_end``, shape ``(batch,)``."""
        return self.log_growth[:, -1]

    @property
    def per_axis(self) -> torch.Tensor:
        """``log l`` at ``t_end`` divided by the number of axes (comparable across ``N``)."""
        return self.total / self.n_axes

    def at(self, step: int) -> torch.Tensor:
        """``log l`` after ``step`` steps (1-based, as in seed 000's Fig. 3), shape ``(batch,)``."""
        if not 1 <= step <= self.log_growth.shape[1]:
            raise ValueError(f"step must lie in 1..{self.log_growth.shape[1]}, got {step}")
        return self.log_growth[:, step - 1]


def score_jvp(score, x: torch.Tensor, t, tangents: torch.Tensor) -> torch.Tensor:
    """Deprecated alias of :func:`mempkg.score.score_jvp` (its home since version 0.2)."""
    warnings.warn("mempkg.volume.score_jvp is deprecated; use mempkg.score.score_jvp", DeprecationWarning, stacklevel=2)
    return _score_jvp(score, x, t, tangents)


def _orthonormalise(vectors: torch.Tensor):
    """Gram-Schmidt of the rows of ``vectors`` (batch, k, d): orthonormal rows and the lengths R_kk.

    Computed by a QR decomposition with the signs fixed so that ``R_kk > 0``, which makes it
    exactly classical Gram-Schmidt in the given order.
    """
    q, r = torch.linalg.qr(vectors.transpose(1, 2))          # (batch, d, k), (batch, k, k)
    diag = torch.diagonal(r, dim1=1, dim2=2)
    sign = torch.where(diag < 0, -1.0, 1.0).to(diag.dtype)
    return (q * sign[:, None, :]).transpose(1, 2), diag.abs()


def _initial_axes(b: int, n_axes: int, d: int, generator, dtype, device):
    """Random orthonormal axes (seed 000, Algorithm 1, lines 3-4), shape ``(b, n_axes, d)``."""
    eps = randn((b, n_axes, d), generator, dtype, device)
    axes, _ = _orthonormalise(eps)
    return axes


@torch.no_grad()
def volume_growth(
    score,
    x0: torch.Tensor,
    sde: VPSDE,
    n_axes: int = 100,
    sigma: float = 0.05,
    n_steps: int = 1000,
    t_start: float = 1e-3,
    t_end: float = 1.0,
    method: str = "paper",
    generator: torch.Generator | None = None,
    grid: str = "log",
    ode_method: str = "euler",
    batch_size: int | None = None,
    progress: bool = False,
) -> VolumeGrowth:
    """Log volume growth of a small sphere around each ``x0`` along the probability-flow ODE.

    Seed 000, Eq. 13 and Algorithm 1, batched: the centre and all ``N`` offset points of every
    point of the batch move together, one score call on ``batch * (N + 1)`` points per ODE
    evaluation, and the growth is accumulated in log space.

    Parameters
    ----------
    score : callable ``score(x, t)``
    x0 : tensor ``(batch, *data_shape)``
        The points whose growth is measured (training images, at ``t_start``).
    sde : VPSDE
    n_axes : int, 1 <= n_axes <= d
        Number ``N`` of orthogonal axes. The paper uses 100 on CIFAR-10 (d = 3,072); for 8x8
        digits at most 64 exist.
    sigma : float > 0
        Radius of the sphere in data units (0.05 in seed 000); unused by ``"jvp"``.
    n_steps : int
        Number ``T`` of ODE steps.
    t_start, t_end : float in (0, 1], ``t_start < t_end``
    method : {"paper", "qr", "jvp"}
        See the module docstring.
    generator : torch.Generator, optional
        Draws the initial random axes; results are deterministic given it.
    grid : {"log", "uniform", "paper"}
        Time grid (see :func:`mempkg.ode.time_grid`). ``"paper"`` (with ``n_steps=1000``) is seed
        000's code: steps of exactly ``1e-3``, the last ending at ``t_end + 1e-3``; the
        ``times`` returned then end at 1.001.
    ode_method : {"euler", "heun"}
        The ODE step. ``"euler"`` is seed 000's.
    batch_size : int, optional
        Process the points in chunks of this many (memory: ``batch_size * (N + 1)`` points).
    progress : bool
        Show a progress bar over the steps.

    Returns
    -------
    VolumeGrowth with ``log_growth`` of shape ``(batch, n_steps)`` and ``times``.

    References
    ----------
    Seed 000 (Hasegawa & Yasuda), Eq. 13 and Algorithm 1; Appendix A for the N and sigma sweeps.
    """
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
        raise ValueError("x0 must be a tensor of shape (batch, *data_shape)")
    d = math.prod(x0.shape[1:])
    n_axes = check_positive_int(n_axes, "n_axes")
    if n_axes > d:
        raise ValueError(f"n_axes must be at most the data dimension d = {d} (orthogonal axes), got {n_axes}")
    sigma = check_positive(sigma, "sigma")
    n_steps = check_positive_int(n_steps, "n_steps")
    t_start = check_time(t_start, "t_start")
    t_end = check_time(t_end, "t_end")
    if t_start >= t_end:
        raise ValueError(f"t_start must be smaller than t_end = {t_end} (the flow runs from data to noise), got {t_start}")
    check_choice(method, "method", VOLUME_METHODS)
    check_choice(grid, "grid", GRIDS)
    check_choice(ode_method, "ode_method", METHODS)
    taus = time_grid(t_start, t_end, n_steps, grid)
    chunk = x0.shape[0] if batch_size is None else check_positive_int(batch_size, "batch_size")
    parts = []
    for start in range(0, x0.shape[0], chunk):
        parts.append(_volume_growth_chunk(score, x0[start:start + chunk], sde, n_axes, sigma, taus, method,
                                          generator, ode_method, progress))
    log_growth = torch.cat([p[0] for p in parts])
    x_end = torch.cat([p[1] for p in parts])
    return VolumeGrowth(log_growth, taus[1:].to(x0.device), x_end, method, n_axes, sigma)


def _volume_growth_chunk(score, x0, sde, n_axes, sigma, taus, method, generator, ode_method, progress):
    b, shape = x0.shape[0], tuple(x0.shape[1:])
    d = math.prod(shape)
    axes = _initial_axes(b, n_axes, d, generator, x0.dtype, x0.device)       # (b, N, d), orthonormal
    centre = x0.reshape(b, d)
    offsets = axes if method == "jvp" else sigma * axes
    taus_list = taus.tolist()
    log_l = torch.zeros(b, dtype=x0.dtype, device=x0.device)
    out = torch.empty(b, len(taus_list) - 1, dtype=x0.dtype, device=x0.device)
    for k in tqdm(range(len(taus_list) - 1), disable=not progress, desc=f"volume growth ({method})", leave=False):
        ta, tb = taus_list[k], taus_list[k + 1]
        if method == "jvp":
            c_new, v_new = ode_step_jvp(score, centre.reshape(b, *shape), sde, ta, tb,
                                        offsets.reshape(b, n_axes, *shape), ode_method)
            centre, moved = c_new.reshape(b, d), v_new.reshape(b, n_axes, d)
        else:
            pts = torch.cat([centre[:, None], centre[:, None] + offsets], dim=1)     # (b, N+1, d)
            # the offsets as the points hold them: far from the data (|x| in the hundreds) float32
            # rounds centre + offset by ~|x| 6e-8 per coordinate, which lengthens sigma on average
            realised = (pts[:, 1:] - pts[:, :1]).double()
            pts = ode_step(score, pts.reshape(b * (n_axes + 1), *shape), sde, ta, tb, ode_method)
            pts = pts.reshape(b, n_axes + 1, d)
            centre, moved = pts[:, 0], pts[:, 1:] - pts[:, :1]
        check_finite(moved.reshape(b, -1), k + 1, tb, f"volume-growth ({method})")
        if method == "paper":
            lengths = moved.norm(dim=2)                                        # (b, N)
            log_l = log_l + (lengths.double().log() - realised.norm(dim=2).log()).sum(1).to(log_l)
            order = lengths.argsort(dim=1, descending=True)
            moved = torch.gather(moved, 1, order[:, :, None].expand_as(moved))
            axes, _ = _orthonormalise(moved)
            offsets = sigma * axes
        else:
            axes, r_diag = _orthonormalise(moved)
            if method == "jvp":
                log_l = log_l + r_diag.log().sum(1)
            else:
                r_old = _orthonormalise(realised)[1]                           # realised volume
                log_l = log_l + (r_diag.double().log() - r_old.log()).sum(1).to(log_l)
            offsets = (1.0 if method == "jvp" else sigma) * axes
        out[:, k] = log_l
    return out, centre.reshape(b, *shape)


@torch.no_grad()
def volume_growth_loop(score, x0: torch.Tensor, sde: VPSDE, n_axes: int = 100, sigma: float = 0.05,
                       n_steps: int = 1000, t_start: float = 1e-3, t_end: float = 1.0,
                       generator: torch.Generator | None = None, grid: str = "log") -> torch.Tensor:
    """Algorithm 1 of seed 000 written literally: one point at a time, Gram-Schmidt by hand.

    The reference that tests and ``benchmarks/volume_growth.py`` compare :func:`volume_growth`
    (``method="paper"``, Euler) with. Like the paper's code, each point's ``N`` axes move as one
    batch; points, steps and axes are Python loops. Draws the same initial axes as
    :func:`volume_growth` from the same generator. Returns the cumulative ``log l``,
    shape ``(batch, n_steps)``.
    """
    taus = time_grid(t_start, t_end, n_steps, grid).tolist()
    out = torch.empty(x0.shape[0], n_steps, dtype=x0.dtype, device=x0.device)
    shape, d = tuple(x0.shape[1:]), math.prod(x0.shape[1:])

    def gram_schmidt(rows):
        basis = []
        for r in rows:
            for q in basis:
                r = r - (r @ q) * q
            basis.append(r / r.norm())
        return torch.stack(basis)

    axes_all = _initial_axes(x0.shape[0], n_axes, d, generator, x0.dtype, x0.device)
    for i in range(x0.shape[0]):
        centre = x0[i].reshape(1, d)
        points = centre + sigma * gram_schmidt(axes_all[i])                  # lines 3-4
        log_l = 0.0
        for k in range(n_steps):                                              # line 5
            old = (points - centre).norm(dim=1)
            centre = ode_step(score, centre.reshape(1, *shape), sde, taus[k], taus[k + 1]).reshape(1, d)   # line 6
            points = ode_step(score, points.reshape(n_axes, *shape), sde, taus[k], taus[k + 1]).reshape(n_axes, d)  # line 7
            new = (points - centre).norm(dim=1)
            log_l += float((new.log() - old.log()).sum())                     # lines 8-10
            order = new.argsort(descending=True)                              # line 11
            points = centre + sigma * gram_schmidt((points - centre)[order])  # lines 12-13
            out[i, k] = log_l
    return out
