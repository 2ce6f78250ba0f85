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
  adjusted score norm ``A^{s^CFG}`` (Eq. 25) and ``A^FLIPD`` (Eqs. 26-28), for a class.

In the VP-SDE used throughout the book, ``sigma~^2(t) |s~|^2`` of the paper's DDIM parameterisation is
``v(t) |s|^2`` (the rescaling by ``psi(t)`` cancels), which is what is computed here.
"""
from __future__ import annotations

import math
import warnings

import torch

from ._checks import check_positive, check_positive_int, check_time, no_other_kwargs, renamed_argument
from .lid import flipd_at_noisy
from .ode import integrate, ode_step, time_grid
from .score import NetworkScore
from .sde import VPSDE

__all__ = ["CFGScore", "cfg_vector_norm", "noise_detectors", "cfg_metrics"]


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


@torch.no_grad()
def cfg_metrics(score: NetworkScore, label: int, sde: VPSDE, scale: float = 1.0, n_trajectories: int = 16,
                n_steps: int = 50, t_max_flipd: float = 0.2, t_min: float = 1e-3, n_probes: int | None = 1,
                generator: torch.Generator | None = None, dtype=torch.float32, device=None,
                **deprecated) -> dict[str, float]:
    """Trajectory-averaged memorization metrics of a class (seed 004, App. D.2, Eqs. 24-28).

    Samples ``n_trajectories`` trajectories (``n_samples`` in versions up to 0.1) of the guided probability-flow ODE for class ``label`` from
    ``t = 1`` to ``t_min`` on a uniform grid of ``n_steps`` steps, and averages over the grid times and
    the trajectories:

    * ``A_cfg``: ``v(t) |s_cfg - s(.; null)|^2`` over ``t`` in (0, 1] (Eq. 24; Wen et al. 2023);
    * ``A_score``: ``v(t) |s_cfg|^2`` over ``t`` in (0, 1] (Eq. 25);
    * ``A_flipd``: ``d + v(t) (tr grad s_cfg + |s_cfg|^2)`` at the trajectory points, over ``t`` in
      (0, ``t_max_flipd``] (Eqs. 26-28; seed 004 uses (0, 0.2]).

    Large ``A_cfg`` and ``A_score`` and small ``A_flipd`` flag a class whose samples are memorized.

    Returns
    -------
    dict with the three metrics (floats).
    """
    if "n_samples" in deprecated:
        n_trajectories = renamed_argument(deprecated, "n_samples", "n_trajectories", "cfg_metrics")
    no_other_kwargs(deprecated, "cfg_metrics")
    n_samples = check_positive_int(n_trajectories, "n_trajectories")
    check_positive(t_max_flipd, "t_max_flipd")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    guided = CFGScore(score, label, scale)
    x = sde.prior_sample((n_samples, *score.data_shape), generator=generator, dtype=dtype, device=device)
    traj = integrate(guided, x, sde, 1.0, t_min, n_steps, grid="uniform", return_trajectory=True)
    a_cfg, a_score, a_flipd = [], [], []
    for t, xt in zip(traj.times[1:].tolist(), traj.states[1:]):
        vec, s_u = guided.cfg_vector(xt, t, return_unconditional=True)
        s_cfg = s_u + scale * vec
        v = sde.v(t)
        a_cfg.append(v * (s_cfg - s_u).reshape(n_samples, -1).pow(2).sum(1).mean().item())
        a_score.append(v * s_cfg.reshape(n_samples, -1).pow(2).sum(1).mean().item())
        if t <= t_max_flipd:
            a_flipd.append(flipd_at_noisy(guided, xt, sde, t, n_probes, generator).mean().item())   # Eq. 26
    if not a_flipd:
        raise ValueError(f"no grid time falls in (0, t_max_flipd = {t_max_flipd}]; use more steps")
    return {"A_cfg": sum(a_cfg) / len(a_cfg), "A_score": sum(a_score) / len(a_score),
            "A_flipd": sum(a_flipd) / len(a_flipd)}
