"""Pointwise and semantic memorization, and what seed 002's Section 3 computes (chapter 6).

Chen et al. measure how much a model ``p`` memorizes a training set ``D = {x_i}`` by

    M_point(D; p) = sum_i KL(p || q_i),   q_i = N(x_i, eps I)                    (Eqs. 1-2)

(smaller = more memorization; ``eps`` is a *variance*) and compare it with the semantic
memorization ``M_sem(D; p) = sum_i E_p |z - z_i|^2`` (Eq. 3). Because ``-log q_i`` is a quadratic,
for every density with a second moment, Gaussian or not,

    M_point = -N H(p) + N (d/2) log(2 pi eps) + M_sem / (2 eps)                  (the identity (*))

which is what Theorem 1 (Eq. 4) should have said: at fixed entropy the slope is ``1/(2 eps)``;
along ``p = N(mu, s I)`` it is ``1/(2 eps) - 1/(2 s)``, not the paper's ``1/(2 eps) + d/(2 s)``.

Everything here works on points in any space (pixels, PCA coordinates, noised ``x_t``): the paper's
"latent" ``z`` is whatever the caller passes. Gaussians are given by a mean ``(d,)`` and a covariance
``(d, d)``; ``points`` are ``(N, d)``; computations run in float64.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _check_eps(eps) -> torch.Tensor:
    eps = _f64(eps)
    if bool((eps <= 0).any()):
        raise ValueError(f"eps must be > 0 (it is the variance of q_i, Eq. 2), got {eps.tolist()}")
    return eps


def _check_gaussian(mean, cov):
    mean, cov = _f64(mean), _f64(cov)
    if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(f"mean must be (d,) and cov (d, d); got {tuple(mean.shape)} and {tuple(cov.shape)}")
    return mean, cov


def _check_points(points, dim: int) -> torch.Tensor:
    points = _f64(points)
    if points.ndim != 2 or points.shape[1] != dim or points.shape[0] == 0:
        raise ValueError(f"points must be (N, {dim}) with N >= 1, got {tuple(points.shape)}")
    return points


# --- Gaussians -----------------------------------------------------------------------------------

def moments(z: torch.Tensor):
    """Maximum-likelihood mean and covariance (normalised by ``n``, not ``n - 1``) of ``z (n, d)``."""
    z = _f64(z).reshape(len(z), -1)
    mean = z.mean(0)
    centred = z - mean
    return mean, centred.T @ centred / len(z)


def gaussian_entropy(cov) -> torch.Tensor:
    """Differential entropy of ``N(., cov)``: ``(d/2) log(2 pi e) + (1/2) log det cov``."""
    cov = _f64(cov)
    d = cov.shape[-1]
    return 0.5 * d * (LOG_2PI + 1) + 0.5 * torch.linalg.slogdet(cov)[1]


def gaussian_kl(mean_p, cov_p, mean_q, cov_q) -> torch.Tensor:
    """``KL(N(mean_p, cov_p) || N(mean_q, cov_q))`` (seed 002, App. A.1, Eq. 24).

    ``mean_q`` may be ``(d,)`` or a batch ``(N, d)`` sharing ``cov_q``; the result has the batch shape.
    """
    mean_p, cov_p = _check_gaussian(mean_p, cov_p)
    mean_q, cov_q = _f64(mean_q), _f64(cov_q)
    d = mean_p.shape[0]
    chol = torch.linalg.cholesky(cov_q)
    diff = (mean_p - mean_q).reshape(-1, d)
    maha = torch.cholesky_solve(diff.T, chol).T.mul(diff).sum(-1)
    ratio = torch.cholesky_solve(cov_p, chol)                         # cov_q^{-1} cov_p
    logdet = torch.linalg.slogdet(cov_p)[1] - 2 * torch.log(torch.diagonal(chol)).sum()
    kl = 0.5 * (maha - logdet + torch.trace(ratio) - d)
    return kl.reshape(mean_q.shape[:-1])


def point_kl(mean, cov, points, eps) -> torch.Tensor:
    """``KL(N(mean, cov) || N(x_i, eps I))`` for every point (Eq. 130), shape ``(..., N)`` for ``eps (...)``.

    ``(1/2) [ |mean - x_i|^2 / eps - log det cov + d log eps + Tr cov / eps - d ]``.
    """
    mean, cov = _check_gaussian(mean, cov)
    points = _check_points(points, mean.shape[0])
    eps = _check_eps(eps)[..., None]
    d = mean.shape[0]
    sq = ((points - mean) ** 2).sum(-1)
    return 0.5 * (sq / eps - torch.linalg.slogdet(cov)[1] + d * torch.log(eps) + torch.trace(cov) / eps - d)


def m_point(mean, cov, points, eps) -> torch.Tensor:
    """``M_point`` of a Gaussian model ``N(mean, cov)`` (Eqs. 1-2 with Eq. 130): the sum of :func:`point_kl`."""
    return point_kl(mean, cov, points, eps).sum(-1)


def m_semantic(mean, cov, points) -> torch.Tensor:
    """``M_sem = sum_i E_p |z - z_i|^2`` for ``p = N(mean, cov)`` (Eq. 3): ``N Tr cov + sum_i |mean - z_i|^2``.

    Eq. 3 only needs the first two moments of ``p``, so this holds for any ``p`` with that mean and
    covariance (an empirical distribution, a mixture): pass its moments.
    """
    mean, cov = _check_gaussian(mean, cov)
    points = _check_points(points, mean.shape[0])
    return len(points) * torch.trace(cov) + ((points - mean) ** 2).sum()


def m_point_identity(entropy, m_sem, n_points: int, dim: int, eps) -> torch.Tensor:
    """The right side of (*): ``-N H(p) + N (d/2) log(2 pi eps) + M_sem / (2 eps)``.

    Exact for every ``p`` with a finite second moment (``-log q_i`` is quadratic in ``z``); the
    corrected form of Theorem 1 (Eq. 4) and of the proof's Eq. 35, which has the entropy's sign
    flipped and the ``log 2 pi eps`` term without its factor ``N``.
    """
    eps = _check_eps(eps)
    return -n_points * _f64(entropy) + n_points * 0.5 * dim * (LOG_2PI + torch.log(eps)) + _f64(m_sem) / (2 * eps)


def theorem1_paper_slope(cov, eps) -> torch.Tensor:
    """The paper's ``dM_point / dM_sem = 1/(2 eps) + Tr(cov^{-1}) / 2`` (Eq. 4), to set beside the true slopes."""
    return 1 / (2 * _check_eps(eps)) + 0.5 * torch.trace(torch.linalg.inv(_f64(cov)))


# --- Monte Carlo, for densities without a closed form ------------------------------------------

def m_point_mc(samples, log_prob, points, eps):
    """Monte Carlo ``M_point`` from ``samples (n, d)`` of ``p`` and their ``log_prob (n,)``: ``(estimate, se)``.

    Each sample contributes ``sum_i [log p(x) - log q_i(x)] = N log p(x) + N (d/2) log(2 pi eps)
    + sum_i |x - x_i|^2 / (2 eps)``; the estimate is their mean and ``se`` its standard error.
    """
    samples = _f64(samples)
    points = _check_points(points, samples.shape[1])
    eps = float(_check_eps(eps))
    n, d = points.shape
    sq = (samples ** 2).sum(1) * n - 2 * samples @ points.sum(0) + (points ** 2).sum()   # sum_i |x - x_i|^2
    values = n * _f64(log_prob) + n * 0.5 * d * (LOG_2PI + math.log(eps)) + sq / (2 * eps)
    return values.mean(), values.std() / math.sqrt(len(values))


def mixture_log_prob(x, centers, variance) -> torch.Tensor:
    """``log p(x)`` of ``p = (1/M) sum_j N(c_j, variance I)`` (a copier that blurs each training point)."""
    x, centers = _f64(x), _f64(centers)
    d = centers.shape[1]
    sq = torch.cdist(x, centers) ** 2
    return torch.logsumexp(-sq / (2 * variance), 1) - math.log(len(centers)) - 0.5 * d * (LOG_2PI + math.log(variance))


def blurred_copier_m_point(points, blur, eps, n_samples: int = 20_000, generator: torch.Generator | None = None):
    """``M_point`` of the copier ``(1/N) sum_j N(x_j, blur I)`` of ``points`` by Monte Carlo: ``(estimate, se)``.

    With well-separated points it is about ``-N[(d/2) log(2 pi e blur) + log N] + N (d/2) log(2 pi eps)
    + N (d blur + 2 Tr S) / (2 eps)`` (``S`` the points' covariance), smallest at ``blur = eps``: a
    sharper copy reads as *less* memorization.
    """
    points = _f64(points)
    if blur <= 0:
        raise ValueError(f"blur must be > 0, got {blur}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    which = torch.randint(len(points), (n_samples,), generator=generator)
    x = points[which] + math.sqrt(blur) * torch.randn(n_samples, points.shape[1], generator=generator, dtype=torch.float64)
    return m_point_mc(x, mixture_log_prob(x, points, blur), points, eps)


# --- Proposition 1 and Theorem 2 on labelled points ----------------------------------------------

def _labelled(z, labels):
    z = _f64(z).reshape(len(z), -1)
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(z):
        raise ValueError(f"labels must have one entry per point: {len(labels)} labels for {len(z)} points")
    return z, labels


def label_variance_table(z, labels):
    """Proposition 1 per class, as a DataFrame indexed by class (Eqs. 7-8).

    Columns: ``n``; ``eq7_left`` = ``sum_{i in c} |z_i - mu_c|^2``, ``eq7_right`` = ``sum_{i in c} |z_i - mu|^2``
    and ``eq7_gap`` = right - left, which is exactly ``n_c |mu_c - mu|^2`` (``parallel_axis``): Eq. 7 is
    an identity that any subset satisfies. ``trace_c`` = ``Tr Sigma_c`` and ``trace_ratio`` =
    ``Tr Sigma_c / Tr Sigma`` (Eq. 8 holds per class iff <= 1; the paper claims it always does);
    ``weight`` = ``n_c / n``. ``df.attrs`` holds ``trace`` (``Tr Sigma``), ``within`` =
    ``sum_c pi_c Tr Sigma_c`` and ``between`` = ``sum_c pi_c |mu_c - mu|^2``, whose sum is ``trace``
    (the law of total variance, the identity behind the proof of Eq. 8).
    """
    import pandas as pd

    z, labels = _labelled(z, labels)
    mu, cov = moments(z)
    rows = {}
    for c in torch.unique(labels).tolist():
        zc = z[labels == c]
        mu_c, cov_c = moments(zc)
        left = ((zc - mu_c) ** 2).sum()
        right = ((zc - mu) ** 2).sum()
        rows[c] = {"n": len(zc), "eq7_left": float(left), "eq7_right": float(right), "eq7_gap": float(right - left),
                   "parallel_axis": float(len(zc) * ((mu_c - mu) ** 2).sum()),
                   "trace_c": float(torch.trace(cov_c)), "trace_ratio": float(torch.trace(cov_c) / torch.trace(cov)),
                   "shift": float(((mu_c - mu) ** 2).sum()), "weight": len(zc) / len(z)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "class"
    df.attrs.update(trace=float(torch.trace(cov)), within=float((df.weight * df.trace_c).sum()),
                    between=float((df.weight * df["shift"]).sum()))
    return df


def _class_models(z, labels, c, jitter: float):
    z, labels = _labelled(z, labels)
    if not bool((labels == c).any()):
        raise ValueError(f"no point has label {c!r}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    zc = z[labels == c]
    eye = jitter * torch.eye(z.shape[1], dtype=torch.float64)
    (mu, cov), (mu_c, cov_c) = moments(z), moments(zc)
    return zc, (mu_c, cov_c + eye), (mu, cov + eye)


def theorem2_ratio(z, labels, c, eps, jitter: float = 0.0) -> torch.Tensor:
    """``R(eps) = M_point(D_c; N(mu_c, Sigma_c)) / M_point(D_c; N(mu, Sigma))`` with maximum-likelihood fits (Eq. 9).

    The numerator is the model of class ``c`` alone (``theta_{y=c}``), the denominator the model of all
    of ``z``, both judged on the points of class ``c``, in closed form (Eqs. 130 and 137). ``jitter``
    adds ``jitter * I`` to both covariances (digits' covariances are singular: ``log det`` is
    ``-inf`` without it). ``eps`` may be a tensor; the result has its shape.
    """
    zc, (mu_c, cov_c), (mu, cov) = _class_models(z, labels, c, jitter)
    return m_point(mu_c, cov_c, zc, eps) / m_point(mu, cov, zc, eps)


def theorem2_limit(z, labels, c, jitter: float = 0.0, as_printed: bool = False) -> float:
    """``lim_{eps -> 0} R(eps)``: the ratio of semantic memorizations ``M_sem(D_c; class) / M_sem(D_c; all)``.

    Both ``M_point`` grow like ``M_sem / (2 eps)`` (identity (*)), so the entropies, which the paper's
    explanation rests on, drop out. With maximum-likelihood fits and no jitter this is
    ``2 Tr Sigma_c / (Tr Sigma_c + Tr Sigma + |mu_c - mu|^2)``. ``as_printed=True`` gives the paper's
    Eq. 145 as printed, whose traces lack the factor ``|D_c|``.
    """
    zc, (mu_c, cov_c), (mu, cov) = _class_models(z, labels, c, jitter)
    if as_printed:
        top = ((zc - mu_c) ** 2).sum() + torch.trace(cov_c)
        bottom = ((zc - mu) ** 2).sum() + torch.trace(cov)
        return float(top / bottom)
    return float(m_semantic(mu_c, cov_c, zc) / m_semantic(mu, cov, zc))
