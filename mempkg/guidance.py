"""Classifier-free guidance and the memorization metrics built on it (seed 004, Section 3, App. C.1, D.2).

* :class:`CFGScore` -- the CFG-adjusted score ``s(x; t, null) + lambda (s(x; t, c) - s(x; t, null))``
  (seed 004, Eq. 2) of a class-conditional network; a score function like any other.
* :func:`cfg_vector_norm` -- the norm of the CFG vector ``s(x; t, c) - s(x; t, null)`` at training
  images, after a few Euler steps of the conditional probability-flow ODE up to ``t0`` (seed 004,
  App. C.1, following Wen et al. 2023), in the noise scale ``sigma(t0) |...|``.
* :func:`noise_detectors` -- two detectors that need no denoising, computed on pure noise: the norm
  of the CFG vector at the first step (Wen et al., ICLR 2024) and its angular alignment with the
  unconditional score at low noise (Asthana & Belagiannis, ICLR 2026).
* :func:`cfg_metrics` -- the trajectory-averaged metrics of App. D.2: ``A^CFG`` (Eq. 24), the CFG-
  adjusted score norm ``A^{s^CFG}`` (Eq. 25) and ``A^FLIPD`` (Eqs. 26-28), for a class;
  :func:`cfg_integrands` returns their integrands along every trajectory and grid time, and
  :func:`time_average` is the time average (seed 004's scheduling distribution, uniform on a window)
  on any grid.

Two readings of App. D.2 matter on small models (chapter 12). Eq. 24 as written is ``lambda^2`` times
Wen et al.'s metric (the ``lambda^-2`` of Eqs. 17-23 is dropped). And FLIPD at the *noisy* points of
a trajectory is not an LID estimate: for a score consistent with its own marginals its expectation is
``d`` at every ``t`` (:func:`cfg_integrands`, Notes).

In the VP-SDE used throughout the book, ``sigma~^2(t) |s~|^2`` of the paper's DDIM parameterisation is
``v(t) |s|^2`` (the rescaling by ``psi(t)`` cancels), which is what is computed here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._checks import check_positive_int, check_time, no_other_kwargs, renamed_argument
from .lid import flipd_at_noisy
from .ode import integrate, ode_step, time_grid
from .score import NetworkScore
from .sde import VPSDE

__all__ = ["CFGScore", "cfg_vector_norm", "noise_detectors", "cfg_metrics", "cfg_integrands", "CFGIntegrands",
           "time_average", "metric_times"]


class CFGScore:
    """Classifier-free guided score of a class-conditional :class:`~mempkg.score.NetworkScore`.

    ``s_cfg(x; t, c) = s(x; t, null) + scale (s(x; t, c) - s(x; t, null))`` (seed 004, Eq. 2).
    ``scale = 1`` is the plain conditional score, ``scale = 0`` the unconditional one.

    Parameters
    ----------
    score : NetworkScore of a class-conditional network
    label : int, the class ``c``
    scale : float >= 0, the guidance strength ``lambda``
    """

    def __init__(self, score: NetworkScore, label: int, scale: float = 1.0):
        if getattr(score.net, "n_classes", None) is None:
            raise ValueError("score must wrap a class-conditional network (n_classes set)")
        if not 0 <= label < score.net.n_classes:
            raise ValueError(f"label must lie in 0..{score.net.n_classes - 1}, got {label!r}")
        if scale < 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        self.conditional = score.with_label(label)
        self.unconditional = score.with_label(None)
        self.label, self.scale, self.sde = label, float(scale), score.sde
        self.data_shape = score.data_shape

    def __repr__(self) -> str:
        return f"CFGScore(label={self.label}, scale={self.scale:g})"

    @classmethod
    def from_scores(cls, conditional, unconditional, scale: float = 1.0, label=None) -> "CFGScore":
        """Classifier-free guidance of any two score functions (exact scores, for instance).

        ``conditional`` and ``unconditional`` are callables ``score(x, t)`` for ``p_t(x | c)`` and
        ``p_t(x)``, with a ``data_shape`` attribute; ``label`` is only a name for ``c``.
        """
        if scale < 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        shape = getattr(conditional, "data_shape", None)
        if shape is None or tuple(shape) != tuple(getattr(unconditional, "data_shape", ()) or ()):
            raise ValueError("conditional and unconditional must be scores with the same data_shape attribute")
        self = cls.__new__(cls)
        self.conditional, self.unconditional = conditional, unconditional
        self.label, self.scale = label, float(scale)
        self.sde = getattr(conditional, "sde", None)
        self.data_shape = tuple(shape)
        return self

    def cfg_vector(self, x: torch.Tensor, t, return_unconditional: bool = False):
        """The CFG vector ``s(x; t, c) - s(x; t, null)`` (and the unconditional score, when asked).

        Every CFG metric of :mod:`mempkg.guidance` is built on it (seed 004, Eqs. 2 and 24).
        """
        uncond = self.unconditional(x, t)
        vec = self.conditional(x, t) - uncond
        return (vec, uncond) if return_unconditional else vec

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        vec, uncond = self.cfg_vector(x, t, return_unconditional=True)
        return uncond + self.scale * vec


@torch.no_grad()
def cfg_vector_norm(score: NetworkScore, x: torch.Tensor, sde: VPSDE, labels, t0: float = 0.01, n_steps: int = 3,
                    scale: float | None = None):
    """CFG vector norm at (training) images, as seed 004 scores real images (App. C.1).

    Each image is carried by ``n_steps`` Euler steps of the *conditional* probability-flow ODE, from
    ``t0 / (n_steps + 1)`` (the ODE cannot start at 0) up to ``t0``, and
    ``sigma(t0) |s(x; t0, c) - s(x; t0, null)|`` is returned there: the CFG vector in the scale of the
    predicted noise (Wen et al. 2023 use ``|eps(x, c) - eps(x, null)|``, the same quantity).

    Parameters
    ----------
    score : NetworkScore of a class-conditional network
    x : tensor ``(batch, *data_shape)``
    sde : VPSDE
    labels : long tensor ``(batch,)`` or int: the classes ``c``
    t0 : float in (0, 1] (0.01 in seed 004)
    n_steps : int (3 in seed 004)
    scale : float, optional
        When given, also return the CFG-adjusted score norm ``sigma(t0) |s_cfg(x; t0, c)|`` at the
        same points, with guidance strength ``scale`` (seed 004, Fig. 3 compares the two).

    Returns
    -------
    tensor ``(batch,)`` (and a second one with the CFG-adjusted score norms).
    """
    if hasattr(labels, "perturb"):              # the order (score, x, labels, sde) of versions up to 0.1
        warnings.warn("cfg_vector_norm(score, x, labels, sde) is deprecated; call cfg_vector_norm(score, x, sde, labels)",
                      DeprecationWarning, stacklevel=2)
        sde, labels = labels, sde
    t0 = check_time(t0, "t0")
    n_steps = check_positive_int(n_steps, "n_steps")
    labels = torch.as_tensor(labels, dtype=torch.long, device=x.device).expand(x.shape[0])
    taus = time_grid(t0 / (n_steps + 1), t0, n_steps, "uniform").tolist()
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    guided = torch.empty_like(out)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        guide = CFGScore(score, c, 1.0 if scale is None else scale)
        z = x[rows]
        for k in range(n_steps):
            z = ode_step(guide.conditional, z, sde, taus[k], taus[k + 1])
        vec, s_u = guide.cfg_vector(z, t0, return_unconditional=True)
        out[rows] = sde.sigma(t0) * vec.reshape(len(rows), -1).norm(dim=1)
        if scale is not None:
            guided[rows] = sde.sigma(t0) * (s_u + scale * vec).reshape(len(rows), -1).norm(dim=1)
    return out if scale is None else (out, guided)


@torch.no_grad()
def noise_detectors(score: NetworkScore, sde: VPSDE, labels, n_draws: int = 16, t_first: float = 1.0,
                    t_align: float = 0.04, generator: torch.Generator | None = None, dtype=torch.float32,
                    device=None) -> dict[str, torch.Tensor]:
    """Denoising-free memorization detectors of a label, on ``n_draws`` pure-noise inputs ``x_T ~ N(0, I)``.

    * ``"norm"``: ``sigma(t_first) |s(x_T; t_first, c) - s(x_T; t_first, null)|``, the magnitude of the
      conditional-minus-unconditional noise prediction at the first step (Wen et al., "Detecting,
      explaining, and mitigating memorization in diffusion models", ICLR 2024, Sec. 3; their AUC on
      Stable Diffusion 1.5 is about 0.96 at the first step). Larger = memorized.
    * ``"alignment"``: the cosine between the unconditional score and the CFG vector, both evaluated
      at the same ``x_T`` as if it sat at the low noise level ``t_align`` (Asthana & Belagiannis,
      "Detecting and mitigating memorization in diffusion models through anisotropy of the
      log-probability", ICLR 2026: their released code evaluates the pure-noise latent at the third
      to last of 50 DDIM steps, ``t ~ 0.04``, which is our default). The cosine of noise predictions
      equals that of scores (both are scaled by ``-sigma``). Their combined metric is
      ``gamma_1 norm + gamma_2 alignment`` with weights set per model; choose them on held-out data.

    Parameters
    ----------
    score : NetworkScore of a class-conditional network; sde : VPSDE
    labels : int or sequence of ints, the classes (the "prompts") to score
    n_draws : int, noise draws per label (the same draws for every label)
    t_first, t_align : times in (0, 1]

    Returns
    -------
    dict with ``"norm"`` and ``"alignment"``, tensors ``(n_labels, n_draws)``.
    """
    n_draws = check_positive_int(n_draws, "n_draws")
    t_first, t_align = check_time(t_first, "t_first"), check_time(t_align, "t_align")
    labels = [int(c) for c in torch.as_tensor(labels).reshape(-1).tolist()]
    guides = [CFGScore(score, c) for c in labels]           # checks the labels before any work
    x = sde.prior_sample((n_draws, *score.data_shape), generator=generator, dtype=dtype, device=device)
    norm = torch.empty(len(labels), n_draws, dtype=dtype)
    alignment = torch.empty_like(norm)
    for k, guide in enumerate(guides):
        norm[k] = (sde.sigma(t_first) * guide.cfg_vector(x, t_first).flatten(1).norm(dim=1)).cpu()
        vec, uncond = guide.cfg_vector(x, t_align, return_unconditional=True)
        alignment[k] = torch.nn.functional.cosine_similarity(uncond.flatten(1), vec.flatten(1), dim=1).cpu()
    return {"norm": norm, "alignment": alignment}


def time_average(times, values, t_low: float, t_high: float) -> torch.Tensor:
    """Average over ``t ~ Uniform[t_low, t_high]`` of a function known at grid times (trapezoid rule).

    ``(1 / (t_high - t_low)) * integral of values(t) dt``, by the trapezoidal rule on the grid
    times inside the window; a window edge that is not a grid time gets a value interpolated
    linearly in ``log t`` between its neighbours. This is the scheduling distribution ``T`` of seed
    004, App. D.2 (uniform on the window), on any grid: on a log grid a plain mean over the grid
    times would weight small times far more than ``T`` does.

    Parameters
    ----------
    times : tensor ``(n_times,)``, strictly monotone (either direction), in (0, 1]
    values : tensor ``(n_times, ...)``; values outside the window may be NaN (they get no weight)
    t_low, t_high : the window, ``times.min() <= t_low < t_high <= times.max()``

    Returns
    -------
    tensor ``values.shape[1:]`` (float64).
    """
    times = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
    values = torch.as_tensor(values).to(torch.float64).cpu()
    if values.shape[0] != times.numel():
        raise ValueError(f"values must have one row per time ({times.numel()}), got shape {tuple(values.shape)}")
    order = torch.argsort(times)
    ts, vs = times[order], values[order]
    if not bool((ts.diff() > 0).all()):
        raise ValueError("times must be strictly monotone")
    tol = 1e-9 * float(ts[-1])
    if not float(ts[0]) - tol <= t_low < t_high <= float(ts[-1]) + tol:
        raise ValueError(f"the window [t_low, t_high] = [{t_low!r}, {t_high!r}] must lie within the times "
                         f"[{float(ts[0]):g}, {float(ts[-1]):g}] with t_low < t_high")

    def at(t):
        k = int(torch.searchsorted(ts, torch.tensor(t, dtype=torch.float64)))
        for j in (k - 1, k):
            if 0 <= j < len(ts) and abs(float(ts[j]) - t) <= tol:
                return vs[j]
        w = (math.log(t) - math.log(ts[k - 1])) / (math.log(ts[k]) - math.log(ts[k - 1]))
        return (1 - w) * vs[k - 1] + w * vs[k]

    inside = (ts > t_low + tol) & (ts < t_high - tol)
    knots = torch.cat([torch.tensor([t_low], dtype=torch.float64), ts[inside],
                       torch.tensor([t_high], dtype=torch.float64)])
    vals = torch.cat([at(t_low)[None], vs[inside], at(t_high)[None]])
    widths = knots.diff().reshape(-1, *([1] * (vals.ndim - 1)))
    return (0.5 * widths * (vals[1:] + vals[:-1])).sum(0) / (t_high - t_low)


@dataclass(frozen=True)
class CFGIntegrands:
    """The integrands of seed 004's App. D.2 metrics along sampling trajectories of one class.

    Attributes
    ----------
    times : tensor ``(n_times,)``, decreasing from 1 to ``t_min``: the grid of the trajectories
    cfg : tensor ``(n_times, n_trajectories)``: ``v(t) |s_cfg - s(.; null)|^2`` (Eq. 24's integrand)
    score : tensor ``(n_times, n_trajectories)``: ``v(t) |s_cfg|^2`` (Eq. 25's)
    flipd : tensor ``(n_times, n_trajectories)``: FLIPD of ``s_cfg`` at the trajectory points
        (Eq. 26); NaN above ``t_max_flipd``
    t_max_flipd : float; scale : float, the guidance strength ``lambda`` of the trajectories
    """

    times: torch.Tensor
    cfg: torch.Tensor
    score: torch.Tensor
    flipd: torch.Tensor
    t_max_flipd: float
    scale: float

    def metrics(self, t_min: float | None = None, per_trajectory: bool = False) -> dict:
        """``A_cfg``, ``A_score`` (uniform time average over ``[t_min, 1]``) and ``A_flipd`` (over
        ``[t_min, t_max_flipd]``), by :func:`time_average`.

        ``t_min`` (default: the last grid time) lets one move the lower end of both windows without
        sampling again; it must not lie below the grid. With ``per_trajectory`` each metric is a
        tensor ``(n_trajectories,)`` (each trajectory's own time average, e.g. for an AUC over
        trajectories); otherwise the floats averaged over trajectories.
        """
        low = float(self.times.min()) if t_min is None else check_time(t_min, "t_min")
        if low < float(self.times.min()) * (1 - 1e-9):
            raise ValueError(f"t_min must be >= the last grid time {float(self.times.min()):g}, got {t_min!r}")
        if low >= self.t_max_flipd:
            raise ValueError(f"t_min must be < t_max_flipd = {self.t_max_flipd:g}, got {t_min!r}")
        out = {"A_cfg": time_average(self.times, self.cfg, low, 1.0),
               "A_score": time_average(self.times, self.score, low, 1.0),
               "A_flipd": time_average(self.times, self.flipd, low, self.t_max_flipd)}
        if per_trajectory:
            return out
        return {k: float(v.mean()) for k, v in out.items()}


def metric_times(n_steps: int, t_min: float = 1e-3, t_max_flipd: float = 0.2, grid: str = "log") -> torch.Tensor:
    """The times of :func:`cfg_integrands`: ``n_steps`` steps from 1 to ``t_min`` on ``grid``
    (:func:`mempkg.ode.time_grid`), with ``t_max_flipd`` added as a grid time when it falls inside,
    so that both windows of App. D.2 end on grid times. Returns a decreasing float64 tensor."""
    taus = time_grid(1.0, t_min, n_steps, grid)
    if t_min < t_max_flipd < 1 and not bool(torch.isclose(taus, torch.tensor(t_max_flipd, dtype=taus.dtype),
                                                          rtol=1e-9, atol=0).any()):
        taus = torch.sort(torch.cat([taus, torch.tensor([t_max_flipd], dtype=taus.dtype)]), descending=True).values
    return taus


@torch.no_grad()
def cfg_integrands(score, label, sde: VPSDE, scale: float | None = None, n_trajectories: int = 16,
                   n_steps: int = 50, t_max_flipd: float = 0.2, t_min: float = 1e-3, n_probes: int | None = 1,
                   method: str = "heun", grid: str = "log", generator: torch.Generator | None = None,
                   dtype=torch.float32, device=None) -> CFGIntegrands:
    """The integrands of ``A^CFG``, ``A^{s^CFG}`` and ``A^FLIPD`` along guided sampling trajectories.

    Draws ``n_trajectories`` points of the prior and carries them with the guided probability-flow
    ODE from ``t = 1`` to ``t_min`` (``method`` steps on the times of :func:`metric_times`: by
    default Heun on the log grid, the sampler of :func:`mempkg.sampling.sample_ode`), and evaluates
    at every grid time ``t`` (``t = 1`` included), at every trajectory point ``x_t``:
    ``v(t) |s_cfg(x_t; t, c) - s(x_t; t, null)|^2``, ``v(t) |s_cfg(x_t; t, c)|^2`` and, for
    ``t <= t_max_flipd``, ``FLIPD(x_t, t) = d + v(t) (tr grad s_cfg + |s_cfg|^2)``
    (:func:`mempkg.lid.flipd_at_noisy`, ``n_probes`` Hutchinson probes, ``None`` for the exact trace).

    Parameters
    ----------
    score : NetworkScore of a class-conditional network, or a :class:`CFGScore` (then ``label``
        and ``scale`` must be None: it carries its own)
    label : int, the class ``c``
    sde : VPSDE
    scale : float >= 0, the guidance strength ``lambda`` (default 1: the conditional score)
    n_trajectories, n_steps : int
    t_max_flipd : float, upper end of ``A^FLIPD``'s window (0.2 in seed 004)
    t_min : float in (0, 1), the last grid time (seed 004's 50 DDIM steps end at ``t = 1e-3``)
    n_probes, method, grid, generator, dtype, device : as above and in :func:`mempkg.ode.integrate`

    Returns
    -------
    :class:`CFGIntegrands`; its ``metrics()`` are :func:`cfg_metrics`.

    Notes
    -----
    For a score that is the exact score of the marginals its own ODE produces (as at ``lambda = 1``
    for a perfect model), ``E[tr grad s + |s|^2] = integral of Laplacian p_t = 0`` at every ``t``, so
    the expected FLIPD along the trajectories is ``d``, for every class: FLIPD at *noisy* points
    measures no dimension. Its departure from ``d`` is ``v(t) E_q[s . (s - grad log q_t)]`` (Stein's
    identity), ``q_t`` the law of the sampler's points: a mismatch between the score and its own
    samples, not an LID. ``tests/test_guidance.py`` checks this on exact Gaussian scores.
    """
    if isinstance(score, CFGScore):
        if label is not None or scale is not None:
            raise ValueError("a CFGScore carries its label and scale: pass label=None and scale=None")
        guided = score
    else:
        guided = CFGScore(score, label, 1.0 if scale is None else scale)
    n_trajectories = check_positive_int(n_trajectories, "n_trajectories")
    n_steps = check_positive_int(n_steps, "n_steps")
    t_max_flipd = check_time(t_max_flipd, "t_max_flipd")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    if t_max_flipd <= t_min:
        raise ValueError(f"t_max_flipd must be > t_min = {t_min:g}, got {t_max_flipd!r}")
    taus = metric_times(n_steps, t_min, t_max_flipd, grid)
    x = sde.prior_sample((n_trajectories, *guided.data_shape), generator=generator, dtype=dtype, device=device)
    traj = integrate(guided, x, sde, n_steps=len(taus) - 1, method=method, times=taus, return_trajectory=True)
    rows = {"cfg": [], "score": [], "flipd": []}
    for t, xt in zip(taus.tolist(), traj.states):
        vec, s_u = guided.cfg_vector(xt, t, return_unconditional=True)
        s_cfg = s_u + guided.scale * vec
        v = sde.v(t)
        rows["cfg"].append(v * (s_cfg - s_u).reshape(n_trajectories, -1).pow(2).sum(1).double().cpu())
        rows["score"].append(v * s_cfg.reshape(n_trajectories, -1).pow(2).sum(1).double().cpu())
        if t <= t_max_flipd * (1 + 1e-9):
            f = flipd_at_noisy(guided, xt, sde, t, n_probes, generator).double().cpu()    # Eq. 26
        else:
            f = torch.full((n_trajectories,), float("nan"), dtype=torch.float64)
        rows["flipd"].append(f)
    return CFGIntegrands(taus, *(torch.stack(rows[k]) for k in ("cfg", "score", "flipd")), t_max_flipd,
                         guided.scale)


def cfg_metrics(score, label, sde: VPSDE, scale: float | None = None, n_trajectories: int = 16,
                n_steps: int = 50, t_max_flipd: float = 0.2, t_min: float = 1e-3, n_probes: int | None = 1,
                generator: torch.Generator | None = None, dtype=torch.float32, device=None,
                method: str = "heun", grid: str = "log", per_trajectory: bool = False,
                **deprecated) -> dict:
    """Trajectory-averaged memorization metrics of a class (seed 004, App. D.2, Eqs. 24-28).

    :func:`cfg_integrands` (arguments as there) averaged over the trajectories and, with
    :func:`time_average`, over ``t ~ Uniform[t_min, 1]`` or ``Uniform[t_min, t_max_flipd]``:

    * ``A_cfg``: ``v(t) |s_cfg - s(.; null)|^2`` over ``[t_min, 1]`` (Eq. 24). As Eq. 24 is written
      this is ``lambda^2`` times the squared CFG vector ``v |s(.; c) - s(.; null)|^2``: seed 004
      drops the factor ``lambda^-2`` of Eqs. 17-23, which Wen et al.'s metric (Eq. 15) has. Divide by
      ``scale**2`` for Wen et al.'s value; compare values across ``lambda`` only after that;
    * ``A_score``: ``v(t) |s_cfg|^2`` over ``[t_min, 1]`` (Eq. 25);
    * ``A_flipd``: FLIPD of ``s_cfg`` at the trajectory points over ``[t_min, t_max_flipd]``
      (Eqs. 26-28; seed 004 uses (0, 0.2]).

    Seed 004 reads large ``A_cfg`` and ``A_score`` and small ``A_flipd`` as memorization. At
    ``lambda = 1`` the expected ``A_flipd`` of a self-consistent model is ``d`` for every class (see
    :func:`cfg_integrands`, Notes).

    Accuracy. Near ``t = 0`` the integrands of an x0-predicting network grow like ``1 / v(t)``
    (``v |s|^2 = |alpha x0_hat - x|^2 / v``): the average depends on ``t_min``, and on a uniform grid
    the single step into ``t_min`` dominates. Versions up to 0.1 integrated with Euler on a uniform
    50-step grid and took the plain mean over the grid times; on chapter 12's model the last grid
    time (``t = 1e-3``, after a jump from ``t = 0.02``) then carried 50 to 80 % of ``A_flipd`` and
    over 90 % of ``A_cfg``. ``method="euler", grid="uniform"`` gives that grid (with trapezoid
    weights).

    Returns
    -------
    dict with ``"A_cfg"``, ``"A_score"``, ``"A_flipd"``: floats, or tensors ``(n_trajectories,)``
    with ``per_trajectory=True``.
    """
    if "n_samples" in deprecated:
        n_trajectories = renamed_argument(deprecated, "n_samples", "n_trajectories", "cfg_metrics")
    no_other_kwargs(deprecated, "cfg_metrics")
    found = cfg_integrands(score, label, sde, scale, n_trajectories=n_trajectories, n_steps=n_steps,
                           t_max_flipd=t_max_flipd, t_min=t_min, n_probes=n_probes, method=method, grid=grid,
                           generator=generator, dtype=dtype, device=device)
    return found.metrics(per_trajectory=per_trajectory)
