"""Score functions: exact scores of known distributions noised by the VP-SDE.

A *score function* is any callable ``score(x, t)`` with ``x`` of shape ``(batch, *data_shape)``
and ``t`` a float or a ``(batch,)`` tensor in (0, 1], returning ``grad_x log p_t(x)`` with the
shape of ``x``. Every estimator in mempkg (ODE integration, volume growth, LID) accepts any such
callable, so exact scores, trained networks and guided scores are interchangeable.

This module provides the exact ones:

* :class:`EmpiricalScore` -- the score of the noised empirical distribution of a training set,
  ``p_t(x) = (1/n) sum_i N(x; alpha(t) y_i, v(t) I)`` (seed 000, Eqs. 10-11). It is the
  minimiser of the denoising score-matching loss over all functions, and the model that
  reproduces its training set exactly.
* :class:`GaussianScore` -- the score of ``N(mu, Sigma)`` noised by the VP-SDE, for any
  (possibly rank-deficient) covariance: ``p_t = N(alpha mu, alpha^2 Sigma + v I)``. It also
  provides the closed-form solution of the probability-flow ODE (:meth:`GaussianScore.flow_map`).
* :class:`MixtureScore` -- a weighted mixture of components that know their log-density.
* :class:`SphereScore` -- the uniform distribution on a circle or a 2-sphere embedded in R^d,
  noised (closed form with Bessel / hyperbolic functions): a curved manifold of known dimension.

and the learned one, :class:`NetworkScore`, which reads a network's output as a predicted noise
(``"eps"``) or a predicted clean image (``"x0"``) and converts it to a score; and
:class:`GuidedScore`, any score guided by a classifier (seed 002, Eq. 12).

:func:`score_jvp` is the one place where the derivative of a score along a direction is taken
(analytically for exact scores, by forward-mode autodiff otherwise).

Each class also exposes ``log_prob(x, t)``, so scores can be checked against autograd and
likelihoods computed exactly.
"""
from __future__ import annotations

import math
import warnings

import torch

from ._checks import as_time_tensor, check_choice, check_positive_int, check_time
from ._random import randint, randn
from .sde import VPSDE

__all__ = ["EmpiricalScore", "GaussianScore", "MixtureScore", "SphereScore", "NetworkScore", "GuidedScore",
           "PARAMETERIZATIONS", "score_jvp"]

PARAMETERIZATIONS = ("eps", "x0")


def score_jvp(score, x: torch.Tensor, t, tangents: torch.Tensor) -> torch.Tensor:
    """Derivative of any score along directions: ``(d score / d x)(x, t) u`` for each tangent ``u``.

    Parameters
    ----------
    score : callable ``score(x, t)``
        Uses ``score.jvp(x, t, tangents)`` when the score provides one (the exact scores of this
        module do, analytically), else forward-mode automatic differentiation
        (``torch.func.jvp``) over all tangents at once.
    x : tensor ``(batch, *data_shape)``
    t : float or tensor ``(batch,)``; per-example times follow their points
    tangents : tensor ``(batch, k, *data_shape)``

    Returns
    -------
    tensor ``(batch, k, *data_shape)``.

    Volume growth (tangent propagation, :func:`mempkg.ode.ode_step_jvp`) and FLIPD's trace
    (:func:`mempkg.lid.flipd`) are built on it.
    """
    count = getattr(score, "count_tangents", None)     # a cost counter (mempkg.audit.CountingScore)
    if count is not None:
        count(tangents.shape[0] * tangents.shape[1])
    if hasattr(score, "jvp"):
        return score.jvp(x, t, tangents)
    with warnings.catch_warnings():  # torch's forward-AD set-up warns about its own use of jit
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        try:
            return _jvp_shared_primal(score, x, t, tangents)
        except (RuntimeError, NotImplementedError):     # a score vmap cannot batch: copy the points
            return _jvp_repeated_points(score, x, t, tangents)


def _jvp_shared_primal(score, x, t, tangents):
    """Forward-mode JVPs of all ``k`` tangents of a point with one primal pass (``vmap`` of ``jvp``).

    The score is evaluated once on ``x`` and only the tangent computations are batched over the
    ``k`` directions, which costs about one forward pass on ``batch * k`` points instead of the
    two or three that forward-mode AD on ``k`` copies of each point costs.
    """
    def one(u):
        return torch.func.jvp(lambda z: score(z, t), (x,), (u,))[1]

    return torch.func.vmap(one, in_dims=1, out_dims=1)(tangents.contiguous())


def _jvp_repeated_points(score, x, t, tangents):
    """Forward-mode JVPs on ``k`` copies of each point (for scores ``vmap`` cannot batch)."""
    b, k = tangents.shape[:2]
    xr = x.repeat_interleave(k, dim=0)                      # a copy: forward AD rejects overlapping views
    if isinstance(t, torch.Tensor) and t.ndim == 1:        # per-example times follow their points
        t = t.repeat_interleave(k)
    _, out = torch.func.jvp(lambda z: score(z, t), (xr,), (tangents.contiguous().reshape(b * k, *x.shape[1:]),))
    return out.reshape(tangents.shape)


class _ExactScore:
    """Shared plumbing: data shape, flattening and shape checks."""

    data_shape: tuple
    sde: VPSDE

    @property
    def dim(self) -> int:
        return math.prod(self.data_shape)

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a tensor of shape (batch, {', '.join(map(str, self.data_shape))}), got {type(x).__name__}")
        if tuple(x.shape[1:]) != tuple(self.data_shape):
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def _schedule(self, x_flat: torch.Tensor, t):
        """alpha(t) and v(t) as ``(batch, 1)`` tensors."""
        tt = as_time_tensor(t, x_flat)
        return self.sde.alpha(tt), self.sde.v(tt)


class EmpiricalScore(_ExactScore):
    """Exact score of the noised empirical distribution of ``train`` (seed 000, Eqs. 10-11).

    With training points ``y_1, ..., y_n`` the VP-SDE marginal at time t is the Gaussian mixture
    ``p_t(x) = (1/n) sum_i N(x; alpha y_i, v I)``, whose score is

    ``s(x, t) = (alpha E[y | x_t = x] - x) / v``,  with posterior weights
    ``w_i(x) = softmax_i(-|x - alpha y_i|^2 / (2 v))`` and ``E[y | x_t = x] = sum_i w_i y_i``.

    The score itself (:meth:`posterior_mean`) is computed with a streaming log-sum-exp over chunks
    of training points, so its memory is ``O(batch * chunk_size)`` whatever the size of the
    training set; :meth:`logits`, :meth:`posterior_weights`, :meth:`log_prob` and :meth:`jvp` hold
    ``(batch, n)`` weights (``(batch, k, n)`` for ``k`` tangents). The squared
    distances are expanded as ``|x|^2 - 2 alpha x.y + alpha^2 |y|^2`` (one matrix product);
    ``|x|^2`` cancels in the softmax. In float32 that expansion costs about ``1e-7 |x.y| / v``
    in the logits (a few hundredths for 8x8 digits at t = 1e-3): use float64 below t ~ 1e-2.

    Parameters
    ----------
    train : tensor, shape ``(n, *data_shape)``
        Training points ``y_i``. Repeated rows count with their multiplicity.
    sde : VPSDE
    chunk_size : int
        Training points processed at once (default 4096).

    References
    ----------
    Seed 000, Eqs. 10-11; Karras et al. (2022), Eq. 57 (the ideal denoiser).
    """

    def __init__(self, train: torch.Tensor, sde: VPSDE, chunk_size: int = 4096):
        if not isinstance(train, torch.Tensor) or train.ndim < 2 or train.shape[0] == 0:
            raise ValueError("train must be a tensor of shape (n, *data_shape) with n >= 1")
        self.train = train
        self.sde = sde
        self.data_shape = tuple(train.shape[1:])
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"EmpiricalScore(n={self.n}, data_shape={self.data_shape}, sde={self.sde!r})"

    @property
    def n(self) -> int:
        return self.train.shape[0]

    def _train_like(self, x: torch.Tensor):
        key = (x.dtype, x.device)
        if key not in self._cache:
            y = self.train.reshape(self.n, -1).to(dtype=x.dtype, device=x.device)
            self._cache[key] = (y, (y * y).sum(1))
        return self._cache[key]

    def _chunks(self, x: torch.Tensor, t):
        """Yield ``(logits, y)`` per chunk of training points; logits omit the ``|x|^2`` term."""
        xf = self._flatten(x)
        alpha, v = self._schedule(xf, t)
        y, y2 = self._train_like(xf)
        for start in range(0, self.n, self.chunk_size):
            yc, y2c = y[start:start + self.chunk_size], y2[start:start + self.chunk_size]
            logits = (alpha * (xf @ yc.T) - 0.5 * alpha * alpha * y2c) / v
            yield logits, yc

    def logits(self, x: torch.Tensor, t) -> torch.Tensor:
        """Unnormalised log posterior weights ``log w_i(x) + const``, shape ``(batch, n)``."""
        return torch.cat([lg for lg, _ in self._chunks(x, t)], dim=1)

    def posterior_weights(self, x: torch.Tensor, t) -> torch.Tensor:
        """Posterior ``w_i(x) = P(x_0 = y_i | x_t = x)``, shape ``(batch, n)``; rows sum to 1."""
        return torch.softmax(self.logits(x, t), dim=1)

    def posterior_mean(self, x: torch.Tensor, t) -> torch.Tensor:
        """The ideal denoiser ``E[x_0 | x_t = x] = sum_i w_i(x) y_i``, shaped like ``x``.

        Computed with a streaming (online) log-sum-exp over chunks of training points.
        """
        run_max = run_sum = run_y = None
        for logits, yc in self._chunks(x, t):
            cmax = logits.max(1, keepdim=True).values
            if run_max is None:
                run_max = cmax
                e = torch.exp(logits - run_max)
                run_sum, run_y = e.sum(1, keepdim=True), e @ yc
                continue
            new_max = torch.maximum(run_max, cmax)
            scale = torch.exp(run_max - new_max)
            e = torch.exp(logits - new_max)
            run_sum = run_sum * scale + e.sum(1, keepdim=True)
            run_y = run_y * scale + e @ yc
            run_max = new_max
        return (run_y / run_sum).reshape(x.shape)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """``s(x, t) = (alpha(t) E[x_0 | x_t = x] - x) / v(t)`` (seed 000, Eq. 11)."""
        tt = as_time_tensor(t, x)
        return (self.sde.alpha(tt) * self.posterior_mean(x, t) - x) / self.sde.v(tt)

    def jvp(self, x: torch.Tensor, t, tangents: torch.Tensor) -> torch.Tensor:
        """Jacobian-vector products ``(d s / d x) u`` for several tangents ``u`` at each point.

        Differentiating Eq. 11, ``d s / d x = -I / v + (alpha^2 / v^2) Cov_w(y)``, where
        ``Cov_w(y)`` is the covariance of the training points under the posterior weights
        ``w_i(x)``; so ``J u = -u / v + (alpha^2 / v^2) (E_w[y (y.u)] - E_w[y] (E_w[y].u))``.
        As fast as two score evaluations, and exact (no finite differences).

        Parameters
        ----------
        x : tensor ``(batch, *data_shape)``
        t : float or tensor ``(batch,)``
        tangents : tensor ``(batch, k, *data_shape)``

        Returns
        -------
        tensor ``(batch, k, *data_shape)``
        """
        xf = self._flatten(x)
        if tangents.shape[0] != x.shape[0] or tuple(tangents.shape[2:]) != self.data_shape:
            raise ValueError(f"tangents must have shape (batch, k, {', '.join(map(str, self.data_shape))}), got {tuple(tangents.shape)}")
        alpha, v = self._schedule(xf, t)                      # (batch, 1)
        y, _ = self._train_like(xf)
        w = self.posterior_weights(x, t)                      # (batch, n)
        u = tangents.reshape(tangents.shape[0], tangents.shape[1], -1)   # (batch, k, d)
        ybar = w @ y                                          # (batch, d)
        yu = u @ y.T                                          # (batch, k, n)
        second = (w[:, None, :] * yu) @ y                     # E_w[y (y.u)], (batch, k, d)
        cov_u = second - ybar[:, None, :] * (u * ybar[:, None, :]).sum(-1, keepdim=True)
        a2 = (alpha * alpha / (v * v))[:, :, None]
        return (-u / v[:, :, None] + a2 * cov_u).reshape(tangents.shape)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x) = log (1/n) sum_i N(x; alpha y_i, v I)``, shape ``(batch,)``."""
        xf = self._flatten(x)
        _, v = self._schedule(xf, t)
        lse = torch.cat([lg for lg, _ in self._chunks(x, t)], dim=1).logsumexp(1)
        x2 = (xf * xf).sum(1)
        v = v[:, 0]
        return lse - 0.5 * x2 / v - math.log(self.n) - 0.5 * self.dim * torch.log(2 * math.pi * v)

    def sample(self, n: int, t, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points from ``p_t``: a uniformly chosen training point, noised to time t."""
        n = check_positive_int(n, "n")
        idx = randint(0, self.n, (n,), generator, self.train.device)
        return self.sde.perturb(self.train[idx], t, generator=generator)


class GaussianScore(_ExactScore):
    """Exact score of ``N(mean, cov)`` noised by the VP-SDE.

    The marginal at time t is ``N(alpha mean, S_t)`` with ``S_t = alpha^2 cov + v I``, positive
    definite for t > 0 even when ``cov`` is singular (data on a subspace). With the eigen-
    decomposition ``cov = U diag(lam) U^T``, computed once,

    ``s(x, t) = -U diag(1 / (alpha^2 lam + v)) U^T (x - alpha mean)``.

    Parameters
    ----------
    mean : tensor of shape ``data_shape``
    cov : tensor of shape ``(d, d)`` (symmetric positive semi-definite, d = numel(mean)) or
        ``(d,)`` (a diagonal covariance)
    sde : VPSDE

    References
    ----------
    Seed 000, Eq. 4 (the kernel); seed 004, App. B (Gaussians on subspaces).
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, sde: VPSDE):
        mean = torch.as_tensor(mean)
        if mean.ndim == 0:
            raise ValueError("mean must have at least one dimension (it has the data shape)")
        self.sde = sde
        self.data_shape = tuple(mean.shape)
        d = self.dim
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape == (d,):
            cov = torch.diag(cov)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) or ({d},), got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-10 * max(1.0, cov.abs().max().item())):
            raise ValueError("cov must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        scale = max(1.0, lam.abs().max().item())
        if lam.min().item() < -1e-8 * scale:
            raise ValueError(f"cov must be positive semi-definite, smallest eigenvalue {lam.min().item():.3g}")
        self.mean = mean
        self.cov = cov
        self.eigvals = lam.clamp_min(0.0)
        self.eigvecs = U
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"GaussianScore(data_shape={self.data_shape}, rank={self.rank}, sde={self.sde!r})"

    @property
    def rank(self) -> int:
        """Number of eigenvalues of ``cov`` above ``1e-10`` times the largest."""
        return int((self.eigvals > 1e-10 * self.eigvals.max().clamp_min(1e-300)).sum())

    def _params(self, x: torch.Tensor):
        key = (x.dtype, x.device)
        if key not in self._cache:
            conv = dict(dtype=x.dtype, device=x.device)
            self._cache[key] = (self.mean.reshape(-1).to(**conv), self.eigvals.to(**conv), self.eigvecs.to(**conv))
        return self._cache[key]

    def _whiten(self, x: torch.Tensor, t):
        """Coordinates of ``x - alpha mean`` in the eigenbasis, and the variances ``s_j(t)``."""
        xf = self._flatten(x)
        alpha, v = self._schedule(xf, t)
        mu, lam, U = self._params(xf)
        z = (xf - alpha * mu) @ U
        return z, alpha * alpha * lam + v, U

    def cov_t(self, t) -> torch.Tensor:
        """Covariance ``alpha(t)^2 cov + v(t) I`` of the marginal at time t, shape ``(d, d)``."""
        check_time(t, allow_zero=True)
        t = float(t)
        return self.sde.alpha(t) ** 2 * self.cov + self.sde.v(t) * torch.eye(self.dim, dtype=self.cov.dtype, device=self.cov.device)

    def mean_t(self, t) -> torch.Tensor:
        """Mean ``alpha(t) mean`` of the marginal at time t, shape ``data_shape``."""
        check_time(t, allow_zero=True)
        return self.sde.alpha(float(t)) * self.mean

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """``s(x, t) = -S_t^{-1} (x - alpha(t) mean)``."""
        z, s, U = self._whiten(x, t)
        return (-(z / s) @ U.T).reshape(x.shape)

    def jvp(self, x: torch.Tensor, t, tangents: torch.Tensor) -> torch.Tensor:
        """``(d s / d x) u = -S_t^{-1} u`` for tangents of shape ``(batch, k, *data_shape)``."""
        xf = self._flatten(x)
        alpha, v = self._schedule(xf, t)
        _, lam, U = self._params(xf)
        s = (alpha * alpha * lam + v)[:, None, :]                       # (batch, 1, d)
        u = tangents.reshape(tangents.shape[0], tangents.shape[1], -1)
        return (-((u @ U) / s) @ U.T).reshape(tangents.shape)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """``log N(x; alpha mean, S_t)``, shape ``(batch,)``."""
        z, s, _ = self._whiten(x, t)
        return -0.5 * (z * z / s).sum(1) - 0.5 * torch.log(2 * math.pi * s).sum(1)

    def flow_map(self, x: torch.Tensor, t_from, t_to) -> torch.Tensor:
        """Exact solution of the probability-flow ODE from ``t_from`` to ``t_to``.

        In the eigenbasis the ODE decouples, and ``(z_j - alpha mean_j) / sqrt(s_j(t))`` is
        conserved, where ``s_j(t) = alpha^2 lam_j + v``. Hence
        ``x(t_to) = alpha(t_to) mean + U diag(sqrt(s(t_to) / s(t_from))) U^T (x - alpha(t_from) mean)``.
        For a single training point (``cov = 0``) this is seed 000, Eq. 12.
        """
        z, s_from, U = self._whiten(x, t_from)
        xf = x.reshape(x.shape[0], -1)
        alpha_to, v_to = self._schedule(xf, t_to)
        mu, lam, _ = self._params(xf)
        s_to = alpha_to * alpha_to * lam + v_to
        return (alpha_to * mu + (z * torch.sqrt(s_to / s_from)) @ U.T).reshape(x.shape)

    def sample(self, n: int, t, generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
        """Draw ``n`` points from the marginal at time ``t`` (``t = 0``: the data distribution)."""
        n = check_positive_int(n, "n")
        check_time(t, allow_zero=True)
        t = float(t)
        eps = randn((n, self.dim), generator, dtype, device)
        mu, lam, U = self._params(eps)
        s = self.sde.alpha(t) ** 2 * lam + self.sde.v(t)
        return (self.sde.alpha(t) * mu + (eps * torch.sqrt(s)) @ U.T).reshape(n, *self.data_shape)


class MixtureScore(_ExactScore):
    """Score of a weighted mixture ``p_t = sum_k pi_k p_t^(k)`` of exact components.

    ``s(x, t) = sum_k r_k(x) s_k(x, t)`` with responsibilities
    ``r_k = softmax_k(log pi_k + log p_t^(k)(x))``. Each component must provide
    ``__call__(x, t)`` and ``log_prob(x, t)`` (e.g. :class:`GaussianScore`,
    :class:`EmpiricalScore`) and share the same ``sde`` and data shape.

    Parameters
    ----------
    components : sequence of exact scores
    weights : sequence of positive floats, optional
        Mixture weights (normalised here); equal weights when omitted.
    """

    def __init__(self, components, weights=None):
        components = list(components)
        if not components:
            raise ValueError("components must hold at least one exact score")
        for c in components:
            if not (callable(c) and hasattr(c, "log_prob")):
                raise ValueError("every component must be callable and have a log_prob(x, t) method")
        shapes = {tuple(c.data_shape) for c in components}
        if len(shapes) != 1:
            raise ValueError(f"components must share one data shape, got {sorted(shapes)}")
        sdes = {id(c.sde) for c in components}
        if len(sdes) != 1:
            raise ValueError("components must share one sde object")
        if weights is None:
            weights = [1.0] * len(components)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (len(components),) or bool((weights <= 0).any()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"weights must be {len(components)} finite positive numbers")
        self.components = components
        self.weights = weights / weights.sum()
        self.sde = components[0].sde
        self.data_shape = shapes.pop()

    def responsibilities(self, x: torch.Tensor, t) -> torch.Tensor:
        """Posterior probability of each component, shape ``(batch, n_components)``."""
        self._flatten(x)
        logw = torch.log(self.weights).to(dtype=x.dtype, device=x.device)
        lp = torch.stack([c.log_prob(x, t) for c in self.components], dim=1) + logw
        return torch.softmax(lp, dim=1)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        r = self.responsibilities(x, t)
        scores = torch.stack([c(x, t) for c in self.components], dim=1)
        return (r.reshape(*r.shape, *([1] * (x.ndim - 1))) * scores).sum(1)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        self._flatten(x)
        logw = torch.log(self.weights).to(dtype=x.dtype, device=x.device)
        return (torch.stack([c.log_prob(x, t) for c in self.components], dim=1) + logw).logsumexp(1)

    def sample(self, n: int, t, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points: a component by its weight, then a draw from that component."""
        n = check_positive_int(n, "n")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        out = None
        for j, comp in enumerate(self.components):
            idx = (k == j).nonzero().flatten()
            if idx.numel() == 0:
                continue
            draw = comp.sample(idx.numel(), t, generator=generator)
            if out is None:
                out = torch.empty(n, *self.data_shape, dtype=draw.dtype, device=draw.device)
            out[idx] = draw
        return out


class SphereScore(_ExactScore):
    """Exact score of the uniform distribution on a ``k``-sphere (``k`` = 1 or 2) in ``R^d``, noised.

    The sphere of radius ``R`` lies in the first ``k + 1`` coordinates. Writing ``x = (u, w)`` with
    ``u`` those coordinates, the marginal at time t factorises as ``N(w; 0, v I)`` times

    ``p(u) = (2 pi v)^{-(k+1)/2} exp(-(|u|^2 + alpha^2 R^2) / (2 v)) A_k(z)``,  ``z = alpha R |u| / v``,

    where ``A_k(z)`` is the average of ``exp(z cos)`` over the sphere: ``I_0(z)`` for the circle and
    ``sinh(z) / z`` for the 2-sphere. Hence ``s(x) = -x / v + (alpha R / v) (A_k'/A_k)(z) u/|u|``,
    with ``A_1'/A_1 = I_1/I_0`` and ``A_2'/A_2 = coth z - 1/z``. Every point of the sphere has
    ``LID = k``: a curved test case for LID estimators (chapter 9).

    Parameters
    ----------
    k : {1, 2}, the dimension of the sphere
    ambient : int >= k + 1, the dimension d of the space
    sde : VPSDE
    radius : float > 0
    """

    def __init__(self, k: int, ambient: int, sde: VPSDE, radius: float = 1.0):
        if k not in (1, 2):
            raise ValueError(f"k must be 1 (circle) or 2 (sphere), got {k!r}")
        ambient = check_positive_int(ambient, "ambient")
        if ambient < k + 1:
            raise ValueError(f"ambient must be at least k + 1 = {k + 1}, got {ambient}")
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius!r}")
        self.k, self.sde, self.radius = k, sde, float(radius)
        self.data_shape = (ambient,)

    def __repr__(self) -> str:
        return f"SphereScore(k={self.k}, ambient={self.dim}, radius={self.radius:g}, sde={self.sde!r})"

    def _parts(self, x, t):
        xf = self._flatten(x)
        alpha, v = self._schedule(xf, t)
        u = xf[:, : self.k + 1]
        r = u.norm(dim=1, keepdim=True).clamp_min(1e-300 if xf.dtype == torch.float64 else 1e-30)
        z = alpha * self.radius * r / v
        return xf, alpha, v, u, r, z

    def _log_a(self, z):
        if self.k == 1:
            return torch.log(torch.special.i0e(z)) + z
        # log(sinh z / z), stable for small and large z
        return z + torch.log(-torch.expm1(-2 * z) / (2 * z)).where(z > 1e-4, torch.log1p(z * z / 6) - z)

    def _ratio(self, z):
        if self.k == 1:
            return torch.special.i1e(z) / torch.special.i0e(z)
        small = z < 1e-3
        zs = torch.where(small, torch.ones_like(z), z)
        return torch.where(small, z / 3, 1 / torch.tanh(zs) - 1 / zs)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        xf, alpha, v, u, r, z = self._parts(x, t)
        radial = (alpha * self.radius / v) * self._ratio(z) * u / r
        out = -xf / v
        out = torch.cat([out[:, : self.k + 1] + radial, out[:, self.k + 1:]], dim=1)
        return out.reshape(x.shape)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        xf, alpha, v, u, r, z = self._parts(x, t)
        v1 = v[:, 0]
        return (-(xf.pow(2).sum(1) + (alpha[:, 0] * self.radius) ** 2) / (2 * v1)
                - 0.5 * self.dim * torch.log(2 * math.pi * v1) + self._log_a(z)[:, 0])

    def sample(self, n: int, t, generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
        """``n`` points of the marginal at time ``t`` (``t = 0``: uniform on the sphere)."""
        n = check_positive_int(n, "n")
        check_time(t, allow_zero=True)
        g = randn((n, self.k + 1), generator, dtype, device)
        on = torch.zeros(n, self.dim, dtype=dtype, device=device)
        on[:, : self.k + 1] = self.radius * g / g.norm(dim=1, keepdim=True)
        t = float(t)
        if t == 0:
            return on
        return self.sde.perturb(on, t, generator=generator)


class NetworkScore:
    """A trained network ``net(x, t)`` read as a score function.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(x, t)`` to a tensor shaped like ``x``.
    sde : VPSDE
    parameterization : {"eps", "x0"}
        What the network predicts. ``"eps"``: the noise, so ``s = -eps_hat / sigma(t)``
        (Ho et al. 2020; seed 000's code). ``"x0"``: the clean image, so
        ``s = (alpha(t) x0_hat - x) / v(t)`` (Tweedie's formula read backwards). The choice is a
        real knob of memorization: on 8x8 digits x0-prediction copies its training set an order
        of magnitude sooner (SPEC, section 6).

    The network is used as it is (call ``net.eval()`` first if it has dropout or batch norm);
    gradients flow through it, so autograd and ``torch.func.jvp`` work.
    """

    def __init__(self, net, sde: VPSDE, parameterization: str = "eps", label=None):
        self.net = net
        self.sde = sde
        self.parameterization = check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
        self.data_shape = tuple(getattr(net, "data_shape", ()))
        if label is not None and getattr(net, "n_classes", None) is None:
            raise ValueError("label was given but the network is not class-conditional")
        self.label = label

    def __repr__(self) -> str:
        extra = "" if self.label is None else f", label={self.label!r}"
        return f"NetworkScore({type(self.net).__name__}, parameterization={self.parameterization!r}{extra}, sde={self.sde!r})"

    def with_label(self, label) -> "NetworkScore":
        """The same network read as the score conditioned on ``label`` (``None``: unconditional)."""
        return NetworkScore(self.net, self.sde, self.parameterization, label=label)

    def _net(self, x, t):
        return self.net(x, t) if self.label is None else self.net(x, t, self.label)

    def _predict(self, x: torch.Tensor, t, what: str) -> torch.Tensor:
        """The network's output read as ``what`` ("eps" or "x0"), using ``x = alpha x0 + sigma eps``."""
        out = self._net(x, t)
        if self.parameterization == what:
            return out
        tt = as_time_tensor(t, x)
        alpha, sigma = self.sde.alpha(tt), self.sde.sigma(tt)
        return (x - alpha * out) / sigma if what == "eps" else (x - sigma * out) / alpha

    def predict_eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network's estimate of the noise in ``x = alpha x0 + sigma eps``."""
        return self._predict(x, t, "eps")

    def predict_x0(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network's estimate of the clean image (the denoiser).

        The counterpart of :meth:`predict_eps` for either parameterization; for exact scores
        :func:`mempkg.sampling.denoise` (Tweedie's formula) gives the same quantity.
        """
        return self._predict(x, t, "x0")

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = as_time_tensor(t, x)
        out = self._net(x, t)
        if self.parameterization == "eps":
            return -out / self.sde.sigma(tt)
        return (self.sde.alpha(tt) * out - x) / self.sde.v(tt)


class GuidedScore:
    """Classifier guidance (seed 002, Eq. 12): ``s(x, t) + scale * grad_x log softmax(classifier(x, t))[label]``.

    ``score(x, t) + lambda grad_x log p^t(c | x)`` is the score of the tilted density
    ``p_t(x) p_t(c | x)^lambda``; at ``scale = 1`` with the exact class posterior of the model it is
    the class-conditional score ``grad log p_t(x | c)`` (chapter 7 proves and checks it). A score
    function like any other: every sampler and estimator takes it.

    Parameters
    ----------
    score : callable ``score(x, t)``
    classifier : callable ``classifier(x, t) -> logits (batch, n_classes)``; an ``nn.Module`` is put
        in eval mode (batch normalisation must not use batch statistics while sampling). A
        time-independent classifier may ignore ``t``.
    label : int or long tensor ``(batch,)``: the class ``c`` of each point
    scale : float >= 0, the strength ``lambda``

    The gradient is taken on a detached copy of ``x`` inside ``torch.enable_grad()``, so the guided
    score works inside the samplers of :mod:`mempkg.sampling`, which run without autograd.

    References
    ----------
    Seed 002 (Chen et al.), Eqs. 10-12 and App. E; Dhariwal & Nichol (2021).
    """

    def __init__(self, score, classifier, label, scale: float = 1.0):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        label = torch.as_tensor(label, dtype=torch.long)
        if label.ndim > 1:
            raise ValueError(f"label must be an int or a tensor of shape (batch,), got shape {tuple(label.shape)}")
        n_classes = getattr(classifier, "n_classes", None)
        if n_classes is not None and (bool((label < 0).any()) or bool((label >= n_classes).any())):
            raise ValueError(f"label must lie in 0..{n_classes - 1}, got {label.tolist()}")
        if isinstance(classifier, torch.nn.Module):
            classifier.eval()
        self.score, self.classifier, self.label, self.scale = score, classifier, label, float(scale)
        self.data_shape = tuple(getattr(score, "data_shape", ()))
        self.sde = getattr(score, "sde", None)

    def __repr__(self) -> str:
        return f"GuidedScore(scale={self.scale:g}, label={self.label.tolist() if self.label.numel() < 5 else '...'})"

    def log_posterior_grad(self, x: torch.Tensor, t) -> torch.Tensor:
        """``grad_x log softmax(classifier(x, t))[label]``, shaped like ``x``."""
        label = self.label.to(x.device)
        if label.ndim == 1 and label.shape[0] != x.shape[0]:
            raise ValueError(f"label must have one class per point: {label.shape[0]} labels, {x.shape[0]} points")
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(z, t), dim=1)
            if log_p.ndim != 2:
                raise ValueError(f"classifier must return logits of shape (batch, n_classes), got {tuple(log_p.shape)}")
            picked = log_p.gather(1, label.expand(x.shape[0]).reshape(-1, 1) if label.ndim == 0 else label[:, None])
            (grad,) = torch.autograd.grad(picked.sum(), z)
        return grad

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        s = self.score(x, t)
        if self.scale == 0:
            return s
        return s + self.scale * self.log_posterior_grad(x, t).to(s.dtype)
