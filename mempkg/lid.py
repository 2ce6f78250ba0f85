"""Local intrinsic dimension (LID) estimators (seed 004, Ross et al., Section 4 and App. B-C).

The manifold memorization hypothesis compares the dimension of the model's manifold at a point,
``LID_theta(x)``, with that of the data manifold, ``LID_*(x)``. This module estimates both:

* :func:`flipd` -- FLIPD (Kamkari et al. 2024; seed 004, Eq. 6), from a score function:
  ``d + v(t0) (tr grad s(alpha x, t0) + |s(alpha x, t0)|^2)``; the trace exactly
  (``n_probes=None``) or by Hutchinson's estimator with ``n_probes`` Rademacher probes.
* :func:`score_trace` -- ``tr grad s(x, t)`` alone (exact or Hutchinson), FLIPD's trace term.
* :func:`normal_bundle` -- the normal-bundle estimator (Stanczuk et al. 2024; seed 004,
  Eqs. 7-8): scores at ``K`` noisy copies of ``x`` span the normal space; ``d`` minus their rank.
* :func:`lpca` -- local PCA on a data set (Fukunaga & Olsen 1971; seed 004, App. B.2 and C.1):
  the number of significant explained variances in each point's neighbourhood.
* :func:`jacobian_rank` -- the rank of a decoder's Jacobian (seed 004, App. B.3), for GAN-like
  models ``x = G(z)``. The book's models are diffusion models, so no chapter calls it; it stays
  because it is seed 004's estimator for the generators it also studies, and a user's decoder
  needs nothing else (the tests check it on linear and curved decoders).

All work on batches (``(batch, *data_shape)``), on any device, in float32 or float64, and with
any score callable (exact scores give analytic Jacobian-vector products).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_positive_int, check_time, no_other_kwargs, renamed_argument
from ._random import randint, randn
from .metrics import nearest_neighbors
from .score import score_jvp
from .sde import VPSDE

__all__ = ["flipd", "flipd_at_noisy", "score_trace", "flipd_closed_form_subspace", "normal_bundle", "rank_by_noise_floor",
           "rank_by_gap", "rank_by_quantile", "lpca", "knn_indices", "jacobian_rank"]

#: The share of the Marchenko-Pastur lower edge a singular value must reach to count as a normal
#: direction in :func:`rank_by_noise_floor` (the geometric middle of the two margins measured in
#: its docstring).
NOISE_FLOOR_MARGIN = 0.8


def _rademacher(shape, generator, dtype, device):
    return randint(0, 2, shape, generator, device).to(dtype) * 2 - 1


@torch.no_grad()
def flipd(score, x: torch.Tensor, sde: VPSDE, t0: float = 0.05, n_probes: int | None = 1,
          generator: torch.Generator | None = None, chunk_size: int = 256,
          batch_size: int | None = None) -> torch.Tensor:
    """FLIPD estimate of ``LID_theta(x)`` (seed 004, Eq. 6; Kamkari et al. 2024).

    ``FLIPD(x, t0) = d + v(t0) (tr grad s(alpha(t0) x, t0) + |s(alpha(t0) x, t0)|^2)``.

    For a network score with an ``"eps"`` reading (:class:`~mempkg.score.NetworkScore`) it is
    computed as ``d - sigma tr(d eps / dx) + |eps|^2``, which is the same quantity without the
    division by ``sigma`` (better conditioned at small ``t0``).

    Parameters
    ----------
    score : callable ``score(x, t)``
    x : tensor ``(batch, *data_shape)``: the points whose LID is estimated (clean, at t = 0)
    sde : VPSDE
    t0 : float in (0, 1]
        The noise level. FLIPD -> LID as ``t0 -> 0`` for an exact score; on trained models it
        depends strongly on ``t0`` (0.05 in seed 004's Stable Diffusion runs).
    n_probes : int or None
        Hutchinson probes for the trace (Rademacher vectors); ``None`` for the exact trace
        (``d`` Jacobian-vector products per point).
    generator : torch.Generator, optional, for the probes
    chunk_size : int, tangents pushed at once (memory ``batch * chunk_size * d``)
    batch_size : int, optional
        Points estimated at a time (None: all): with a large network on a GPU the ``batch *
        chunk_size`` rows of one network call are what runs out of memory.

    Returns
    -------
    tensor ``(batch,)``

    References
    ----------
    Seed 004, Eq. 6 and App. B.1, C.1; Hutchinson (1989).
    """
    t0 = check_time(t0, "t0")
    return flipd_at_noisy(score, sde.alpha(t0) * x, sde, t0, n_probes, generator, chunk_size, batch_size)


@torch.no_grad()
def flipd_at_noisy(score, x: torch.Tensor, sde: VPSDE, t: float, n_probes: int | None = 1,
                   generator: torch.Generator | None = None, chunk_size: int = 256,
                   batch_size: int | None = None) -> torch.Tensor:
    """``d + v(t) (tr grad s(x, t) + |s(x, t)|^2)`` at points ``x`` already at noise level ``t``.

    :func:`flipd` is this at ``x = alpha(t0) x_clean``; seed 004's ``A^FLIPD`` (Eq. 26) evaluates it
    along sampling trajectories, where the points are noisy already. Arguments as in :func:`flipd`.

    Cost. For a score with an analytic ``jvp`` (the exact scores) the trace uses it. For a network,
    Hutchinson's ``E[u^T J u]`` is computed in reverse mode: one forward pass of the ``n_probes``
    copies of each point, whose output also gives ``|s|^2``, and one backward pass for ``J^T u``
    (``u^T J^T u = u^T J u``) -- one forward and one backward for one probe. The exact trace pushes
    the ``d`` basis vectors through :func:`mempkg.score.score_jvp` in chunks of ``chunk_size``.
    """
    t0 = check_time(t, "t")
    if n_probes is not None:
        n_probes = check_positive_int(n_probes, "n_probes")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if batch_size is not None and check_positive_int(batch_size, "batch_size") < x.shape[0]:
        return torch.cat([flipd_at_noisy(score, part, sde, t0, n_probes, generator, chunk_size)
                          for part in x.split(batch_size)])
    b, d = x.shape[0], math.prod(x.shape[1:])
    v, sigma = sde.v(t0), sde.sigma(t0)
    eps_form = getattr(score, "parameterization", None) == "eps" and hasattr(score, "predict_eps")
    field = (lambda z, t: score.predict_eps(z, t)) if eps_form else score
    if n_probes is not None and not hasattr(score, "jvp"):
        trace, sq = _hutchinson_reverse(field, x, t0, n_probes, generator, chunk_size)
    else:
        out = field(x, t0)
        sq = out.reshape(b, d).pow(2).sum(1)
        trace = _trace_forward(field, x, t0, n_probes, generator, chunk_size)
    if eps_form:
        return d - sigma * trace + sq
    return d + v * (trace + sq)


def score_trace(score, x: torch.Tensor, t, n_probes: int | None = None,
                generator: torch.Generator | None = None, chunk_size: int = 256) -> torch.Tensor:
    """``tr grad_x s(x, t)`` per point: the trace term of FLIPD (seed 004, Eq. 6) at ``x`` itself.

    Exact with ``n_probes=None`` (the ``d`` basis vectors pushed through
    :func:`mempkg.score.score_jvp` in chunks of ``chunk_size``), else Hutchinson's estimate with
    ``n_probes`` Rademacher probes. :func:`flipd_at_noisy` uses the same computation; this is the
    trace alone, e.g. for the one-step volume growth of chapter 9, ``-h beta/2 (d + tr grad s)``.
    """
    if n_probes is not None:
        n_probes = check_positive_int(n_probes, "n_probes")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    return _trace_forward(score, x, t, n_probes, generator, chunk_size)


def _trace_forward(field, x, t, n_probes, generator, chunk_size):
    """Exact trace (basis tangents) or Hutchinson's estimate by Jacobian-vector products."""
    b, d = x.shape[0], math.prod(x.shape[1:])
    trace = torch.zeros(b, dtype=x.dtype, device=x.device)
    if n_probes is None:
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        for start in range(0, d, chunk_size):
            basis = eye[start:start + chunk_size]                                     # (k, d)
            tangents = basis.expand(b, *basis.shape).reshape(b, basis.shape[0], *x.shape[1:])
            jv = score_jvp(field, x, t, tangents).reshape(b, basis.shape[0], d)
            trace += (jv * basis).sum((1, 2))
        return trace
    done = 0
    while done < n_probes:
        k = min(chunk_size, n_probes - done)
        probes = _rademacher((b, k, *x.shape[1:]), generator, x.dtype, x.device)
        jv = score_jvp(field, x, t, probes)
        trace += (jv * probes).reshape(b, k, d).sum(2).sum(1)
        done += k
    return trace / n_probes


def _hutchinson_reverse(field, x, t, n_probes, generator, chunk_size):
    """Hutchinson's trace by vector-Jacobian products, and ``|field|^2`` from the same forward pass."""
    b, d = x.shape[0], math.prod(x.shape[1:])
    trace = torch.zeros(b, dtype=x.dtype, device=x.device)
    sq = None
    done = 0
    while done < n_probes:
        k = min(chunk_size, n_probes - done)
        probes = _rademacher((b, k, *x.shape[1:]), generator, x.dtype, x.device)
        tt = t.repeat_interleave(k) if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        with torch.enable_grad():
            z = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)
            out = field(z, tt)
            (vjp,) = torch.autograd.grad(out, z, grad_outputs=probes.reshape(b * k, *x.shape[1:]))
        if sq is None:
            sq = out.detach()[::k].reshape(b, d).pow(2).sum(1)
        trace += (vjp.reshape(b, k, d) * probes.reshape(b, k, d)).sum((1, 2))
        done += k
    return trace / n_probes, sq


def flipd_closed_form_subspace(x: torch.Tensor, k: int, sde: VPSDE, t0: float) -> torch.Tensor:
    """Exact FLIPD for data ``N(0, P)``, ``P`` the projector on a ``k``-dim subspace, at ``x`` on it.

    The score of the noised data at ``y`` is ``-(P y + (I - P) y / v)`` (because ``alpha^2 + v = 1``),
    so ``tr grad s = -(k + (d - k)/v)`` and ``|s(alpha x)|^2 = alpha^2 |x|^2``, hence
    ``FLIPD = alpha^2 (k + v |x|^2)``: it tends to ``k`` as ``t0 -> 0``.
    """
    t0 = check_time(t0, "t0")
    return sde.alpha(t0) ** 2 * (k + sde.v(t0) * x.reshape(x.shape[0], -1).pow(2).sum(1))


def rank_by_noise_floor(singular_values: torch.Tensor, n_samples: int, scale: float = 1.0,
                        margin: float = NOISE_FLOOR_MARGIN) -> torch.Tensor:
    """Numerical rank of ``n_samples`` stacked noise samples against their Marchenko-Pastur floor.

    The default rule of :func:`normal_bundle`. Near a manifold the score at ``x_t = alpha x +
    sigma eps`` is ``-eps_N / sigma`` plus terms of order 1: in the ``r = d - LID`` normal
    directions the ``K x d`` matrix of scores is a Gaussian matrix of entry scale ``1 / sigma``
    (whatever the model, since the noise is the forward process's); in the tangent directions
    only the order-1 rest remains. The singular values of a ``K x r`` Gaussian matrix of entry
    scale ``s`` fill the Marchenko-Pastur bulk ``s (sqrt(K) -+ sqrt(r))``, so no normal singular
    value falls far below the lower edge ``s |sqrt(K) - sqrt(r)|``: the rank is the largest ``r``
    with ``sv_r >= margin * s |sqrt(K) - sqrt(r)|``.

    A point mass (an empirical distribution at a training point: ``-eps / sigma`` in all ``d``
    directions) has all ``d`` values in the bulk, hence rank ``d`` and LID 0; a circle or a
    sphere has its one or two tangent values well below the edge. Measured on 200 points of a
    circle and a 2-sphere in ``d = 64`` at ``t0 = 0.1``, ``K = 4d`` (``tests/test_lid.py``), the
    smallest normal value sits at >= 0.94 of its edge and the tangent ones at <= 0.63 of theirs,
    hence ``margin = 0.8``. The known scale matters: estimated from the values themselves, a
    point mass and one normal direction beside ``d - 1`` weaker tangent ones look alike.
    ``K`` must be well above ``d`` (at ``K = d`` the edge is 0 and every direction counts).

    Why not :func:`rank_by_gap`: it appends a zero so that rank ``d`` (LID 0) can be returned,
    and at ``t0 = 0.1`` the drop from the tangent values to that zero is often the largest gap:
    it returned LID 0 at 42.5 % of a circle's points and 26.5 % of a 2-sphere's in ``d = 64``.
    Without the zero it could never return LID 0.

    Parameters
    ----------
    singular_values : tensor ``(batch, m)``, descending (raw, not normalised)
    n_samples : int, the number ``K`` of stacked samples (rows of the matrix)
    scale : float > 0, the entry scale ``s`` of the noise (``1 / sigma(t0)`` for scores)
    margin : float in (0, 1]

    Returns
    -------
    long tensor ``(batch,)``, in ``0..m``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must lie in (0, 1], got {margin!r}")
    sv = singular_values
    m = sv.shape[1]
    r = torch.arange(1, m + 1, dtype=sv.dtype, device=sv.device)
    above = sv >= margin * scale * (math.sqrt(n_samples) - r.sqrt()).abs()
    return torch.where(above.any(1), m - above.flip(1).int().argmax(1), 0)


def rank_by_gap(singular_values: torch.Tensor) -> torch.Tensor:
    """Numerical rank by the largest gap between consecutive singular values (per row).

    Singular values (descending, shape ``(batch, m)``) are normalised by the largest and a zero
    is appended, so every rank from 1 to ``m`` can be returned (full rank when the smallest
    singular value stands clear of zero). :func:`normal_bundle` no longer uses it by default:
    that zero makes the drop from small tangent values the largest gap (see
    :func:`rank_by_noise_floor`).
    """
    sv = singular_values / singular_values[:, :1].clamp_min(torch.finfo(singular_values.dtype).tiny)
    sv = torch.cat([sv, torch.zeros_like(sv[:, :1])], dim=1)
    return (sv[:, :-1] - sv[:, 1:]).argmax(1) + 1


def rank_by_quantile(singular_values: torch.Tensor, quantile: float = 0.1) -> torch.Tensor:
    """Numerical rank against one threshold for all rows: the ``quantile`` of all singular values.

    Seed 004's rule for the normal bundle and the GAN Jacobian (App. C.1): pool the raw singular
    values of every point of the batch, take their 10th percentile (``quantile = 0.1``) as a global
    threshold, and count, per point, the singular values above it. The answer depends on the batch
    (the threshold is shared); shape ``(batch,)``.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    tau = torch.quantile(singular_values.flatten(), quantile)
    return (singular_values > tau).sum(1)


@torch.no_grad()
def normal_bundle(score, x: torch.Tensor, sde: VPSDE, t0: float = 0.1, n_samples: int | None = None,
                  threshold: float | None = None, center: bool = False, generator: torch.Generator | None = None,
                  return_singular_values: bool = False, quantile: float | None = None,
                  chunk_size: int = 1024):
    """Normal-bundle estimate of ``LID_theta(x)`` (Stanczuk et al. 2024; seed 004, Eqs. 7-8).

    Draws ``K = n_samples`` noisy copies ``x_t = alpha(t0) x + sigma(t0) eps`` of each point, stacks
    their scores into a ``K x d`` matrix whose rows approximately span the normal space of the
    model's manifold at ``x``, and returns ``d - rank``.

    Parameters
    ----------
    score : callable ``score(x, t)``
    x : tensor ``(batch, *data_shape)``
    sde : VPSDE
    t0 : float in (0, 1] (0.1 in seed 004's CIFAR-10 runs)
    n_samples : int, default ``4 d`` (Stanczuk et al.'s recommendation)
    threshold : float, optional
        Count singular values above this value (relative to each point's largest singular value)
        as the rank. When omitted, the rank counts the singular values above the sampling-noise
        floor of ``K`` Gaussian samples of scale ``1 / sigma(t0)`` (:func:`rank_by_noise_floor`):
        the ``d - LID`` normal singular values are of order ``sqrt(K)/sigma`` and fill a
        Marchenko-Pastur bulk, the tangent ones are of order ``sqrt(K)`` and fall below its lower
        edge. Unlike the largest
        gap after an appended zero (:func:`rank_by_gap`, the earlier default, which
        returned 0 at 42.5 % of a circle's points in ``d = 64`` at ``t0 = 0.1``), it gets both a
        point mass (LID 0) and curved manifolds right at the default ``t0``.
        Seed 004 thresholds at the 10th percentile of all singular values instead: ``quantile``.
    center : bool
        Subtract the mean score first. For a point slightly off the model's manifold all scores
        share a component pointing back to it, which adds one to the rank; centring removes it.
    generator : torch.Generator, optional
    return_singular_values : bool
        Also return the raw singular values, ``(batch, min(K, d))``, e.g. to apply another rank rule
        to the same draws (:func:`rank_by_noise_floor` with ``K`` and ``1 / sigma(t0)``,
        :func:`rank_by_gap`, :func:`rank_by_quantile`).
    quantile : float in (0, 1), optional
        Seed 004's rule (App. C.1): one threshold for the whole batch, the ``quantile`` of the raw
        singular values of all its points (0.1 in the paper); see :func:`rank_by_quantile`.
        Exclusive with ``threshold``.
    chunk_size : int, noisy copies passed to the score at once (a network's memory on a GPU:
        ``K = 4 d`` is 12,288 copies at 32x32x3); the result does not depend on it, up to rounding

    Returns
    -------
    long tensor ``(batch,)`` (and the singular values).
    """
    t0 = check_time(t0, "t0")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    b, d = x.shape[0], math.prod(x.shape[1:])
    k = 4 * d if n_samples is None else check_positive_int(n_samples, "n_samples")
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1) (relative to the largest singular value), got {threshold!r}")
    if quantile is not None:
        if threshold is not None:
            raise ValueError("quantile and threshold are two rank rules: give at most one")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    sigma = sde.sigma(t0)
    lids, svs = [], []
    for i in range(b):
        noise = randn((k, *x.shape[1:]), generator, x.dtype, x.device)
        xt = sde.alpha(t0) * x[i:i + 1] + sigma * noise
        s = torch.cat([score(xt[j:j + chunk_size], t0) for j in range(0, k, chunk_size)]).reshape(k, d)
        if center:
            s = s - s.mean(0, keepdim=True)
        raw = torch.linalg.svdvals(s)[None]
        sv = raw / raw[:, :1].clamp_min(torch.finfo(raw.dtype).tiny)
        rank = rank_by_noise_floor(raw, k, 1 / sigma) if threshold is None else (sv > threshold).sum(1)
        lids.append(d - rank)
        svs.append(raw)
    lid, raw = torch.cat(lids), torch.cat(svs)
    if quantile is not None:
        lid = d - rank_by_quantile(raw, quantile)
    return (lid, raw) if return_singular_values else lid


def _local_spectra(data: torch.Tensor, neighbourhoods: list[torch.Tensor]) -> list[torch.Tensor]:
    """Explained variances (descending, denominator m - 1) of each neighbourhood's centred points.

    Values below ``1e-12`` times the largest are rounding noise of exactly flat directions and are
    set to zero, so that exact low-dimensional data get exact answers.
    """
    out = []
    for idx in neighbourhoods:
        pts = data[idx]
        if len(pts) < 2:
            out.append(torch.zeros(1, dtype=data.dtype, device=data.device))
            continue
        ev = torch.linalg.svdvals(pts - pts.mean(0, keepdim=True)) ** 2 / (len(pts) - 1)
        out.append(torch.where(ev > 1e-12 * ev[0], ev, torch.zeros_like(ev)))
    return out


def knn_indices(data: torch.Tensor, n_neighbors: int, x: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``n_neighbors`` nearest points of ``data`` to each query (self excluded when
    ``x`` is None), sorted by distance: the neighbourhoods :func:`lpca` uses."""
    return _knn(data, n_neighbors, x)[1]


def _knn(data, n_neighbors, x):
    """:func:`mempkg.metrics.nearest_neighbors` in float64, from the data to itself when ``x`` is None."""
    flat = data.reshape(data.shape[0], -1).double()
    queries = flat if x is None else x.reshape(x.shape[0], -1).to(flat)
    return nearest_neighbors(queries, flat, n_neighbors=n_neighbors, exclude_self=x is None)


@torch.no_grad()
def lpca(data: torch.Tensor, x: torch.Tensor | None = None, n_neighbors: int = 100, version: str = "fo",
         variance_ratio: float = 0.05, variance_quantile: float = 0.1, distance_quantile: float = 0.1,
         neighbors: torch.Tensor | None = None, **deprecated) -> torch.Tensor:
    """Local PCA estimate of ``LID_*`` (Fukunaga & Olsen 1971; seed 004, App. B.2 and C.1).

    Each query point's neighbourhood is its ``n_neighbors`` nearest points of ``data``
    (itself excluded when the queries are the data set, ``x=None``); the neighbourhood is centred
    and its explained variances ``lambda_1 >= lambda_2 >= ...`` (denominator ``m - 1``) computed.

    ``version="fo"``
        Fukunaga-Olsen: the number of ``lambda_i > variance_ratio * lambda_1``. This is
        scikit-dimension's ``lPCA(ver="FO", alphaFO=variance_ratio).fit_pw(data, n_neighbors=n_neighbors)``
        (``alpha`` in versions up to 0.1, renamed: ``alpha`` is the VP-SDE's signal scale; the tests check
        pointwise agreement).
    ``version="ross"``
        Seed 004's modification (App. C.1): one global threshold, the ``variance_quantile``
        quantile of all explained variances of all neighbourhoods; and the neighbourhood
        restricted to the neighbours closer than the ``distance_quantile`` quantile of all
        pairwise distances, when there are any.

        Zero variances are left out of the quantile. A neighbourhood of ``m`` points in ``D``
        dimensions has at most ``m - 1`` non-zero variances, and a restricted neighbourhood of
        copies has none; variances below ``1e-12`` of their neighbourhood's largest are set to
        exactly zero (rounding). Counted in, these zeros were a quarter of all variances on the
        1,180 rows of digits1000_x0's training set (100 neighbours, ``distance_quantile =
        0.001``): the 10th percentile was 0, every non-zero variance counted, and the estimate
        was each neighbourhood's rank (median 49; 44 without the zeros). The quantile of the
        non-zero ones is the threshold seed 004 describes.

        Duplicated points of the data get ``LID_* = 0``: their restricted neighbourhood holds
        only their copies, a point mass of the empirical distribution (whose exact score,
        :class:`~mempkg.score.EmpiricalScore`, gives ``LID_theta = 0`` there too). That is a
        statement about the data, not about a model trained on it: a network's score is smooth,
        and a duplicated image is not a point mass of the learned density. At the 20 duplicated
        digits of the trained model ``digits1000_x0``, FLIPD (exact trace) is 51.7 on average at
        ``t0 = 0.01`` and 2.6 at ``t0 = 0.05``, not 0.

    Parameters
    ----------
    data : tensor ``(n, *data_shape)``
    x : tensor ``(batch, *data_shape)``, optional: query points (default: every point of ``data``)
    n_neighbors : int, at most ``n - 1`` (queries from the data) or ``n``
    neighbors : long tensor ``(batch, k)``, optional
        Precomputed neighbourhoods (indices into ``data``), e.g. to compare with another
        implementation on exactly the same neighbourhoods; ``"fo"`` only.

    Returns
    -------
    long tensor ``(batch,)``.
    """
    check_choice(version, "version", ("fo", "ross"))
    if "alpha" in deprecated:
        variance_ratio = renamed_argument(deprecated, "alpha", "variance_ratio", "lpca")
    no_other_kwargs(deprecated, "lpca")
    for name, value in (("variance_ratio", variance_ratio), ("variance_quantile", variance_quantile),
                        ("distance_quantile", distance_quantile)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    n = data.shape[0]
    flat = data.reshape(n, -1).double()
    if neighbors is not None:
        if version != "fo":
            raise ValueError("neighbors can only be given with version='fo'")
        spectra = _local_spectra(flat, list(torch.as_tensor(neighbors)))
        return torch.tensor([int((s > variance_ratio * s[0]).sum()) for s in spectra], device=data.device)
    dknn, knn = _knn(data, n_neighbors, x)
    if version == "fo":
        spectra = _local_spectra(flat, list(knn))
        return torch.tensor([int((s > variance_ratio * s[0]).sum()) for s in spectra], device=data.device)
    pairwise = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(n, n, 1)
    radius = torch.quantile(pairwise[iu[0], iu[1]], distance_quantile)
    hoods = [row_i[row_d <= radius] if bool((row_d <= radius).any()) else row_i for row_d, row_i in zip(dknn, knn)]
    spectra = _local_spectra(flat, hoods)
    pooled = torch.cat(spectra)
    pooled = pooled[pooled > 0]
    if pooled.numel() == 0:            # every neighbourhood is a point mass
        return torch.zeros(len(spectra), dtype=torch.long, device=data.device)
    tau = torch.quantile(pooled, variance_quantile)
    return torch.tensor([int((s > tau).sum()) for s in spectra], device=data.device)


def jacobian_rank(decoder, z: torch.Tensor, threshold: float | None = None, return_singular_values: bool = False):
    """Rank of the decoder's Jacobian ``dG/dz`` at each latent ``z`` (seed 004, App. B.3).

    Parameters
    ----------
    decoder : callable mapping ``(batch, *latent_shape)`` to ``(batch, *data_shape)``
    z : tensor ``(batch, *latent_shape)``
    threshold : float, optional
        Singular values above it count. When omitted, the numerical rank at the default tolerance
        ``max(sv) * max(D, d') * eps`` (which, seed 004 notes, usually equals the latent dimension:
        they threshold at the 10th percentile of all singular values instead).
    return_singular_values : bool

    Returns
    -------
    long tensor ``(batch,)`` (and the singular values ``(batch, min(D, d'))``).
    """
    ranks, svs = [], []
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda w: decoder(w[None]).reshape(-1), z[i])
        jac = jac.reshape(jac.shape[0], -1)
        sv = torch.linalg.svdvals(jac)
        tol = threshold if threshold is not None else sv.max() * max(jac.shape) * torch.finfo(sv.dtype).eps
        ranks.append(int((sv > tol).sum()))
        svs.append(sv)
    ranks = torch.tensor(ranks, device=z.device)
    return (ranks, torch.stack(svs)) if return_singular_values else ranks
