"""The variance-preserving SDE (VP-SDE) and its probability-flow ODE.

Implements seed 000 (Hasegawa & Yasuda), Eqs. 3-6 and 8-9, which follow Song et al. (2021):

* forward SDE (Eq. 3): ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw`` with the linear schedule
  ``beta(t) = beta_min + t (beta_max - beta_min)``;
* perturbation kernel (Eqs. 4-6): ``p(x_t | x_0) = N(exp(-m(t)) x_0, v(t) I)`` with
  ``m(t) = t beta_min / 2 + t^2 (beta_max - beta_min) / 4`` (the integral of beta/2) and
  ``v(t) = 1 - exp(-2 m(t))``;
* probability-flow ODE (Eq. 8): ``dx/dt = -beta(t)/2 (x + s(x, t))``, which in the variable m
  reads ``dx/dm = -(x + s(x))`` (Eq. 9) because ``dm/dt = beta(t)/2``.

Notation: ``alpha(t) = exp(-m(t))`` is the signal scale and ``sigma(t) = sqrt(v(t))`` the noise
scale, so ``x_t = alpha(t) x_0 + sigma(t) eps``. All schedule methods accept a Python number
(and then return a float) or a tensor (and then return a tensor of the same dtype and device).

Every other module takes an ``sde`` argument and calls these methods; none re-derives the
schedule.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from ._checks import as_time_tensor, check_time
from ._random import randn

__all__ = ["VPSDE"]


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def _sqrt(x):
    return torch.sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)


def _expm1(x):
    return torch.expm1(x) if isinstance(x, torch.Tensor) else math.expm1(x)


class VPSDE:
    """Variance-preserving SDE with a linear ``beta`` schedule on ``t in [0, 1]``.

    Parameters
    ----------
    beta_min, beta_max : float
        Endpoints of the linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``.
        Defaults 0.1 and 20 are those of Song et al. (2021) and seed 000.

    References
    ----------
    Seed 000, Eqs. 3-6 and 8-9; Song et al. (2021), Section 3.4 and Appendix B.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        for name, value in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if beta_min < 0:
            raise ValueError(f"beta_min must be >= 0, got {beta_min}")
        if beta_max <= 0 or beta_max < beta_min:
            raise ValueError(f"beta_max must be > 0 and >= beta_min = {beta_min}, got {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"

    # --- schedule (Eqs. 3, 5, 6) ------------------------------------------------------------
    def beta(self, t):
        """Noise rate ``beta(t) = beta_min + t (beta_max - beta_min)`` (seed 000, below Eq. 3)."""
        check_time(t, allow_zero=True)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def m(self, t):
        """``m(t) = t beta_min / 2 + t^2 (beta_max - beta_min) / 4 = int_0^t beta/2`` (Eq. 5)."""
        check_time(t, allow_zero=True)
        return 0.5 * t * self.beta_min + 0.25 * t * t * (self.beta_max - self.beta_min)

    def alpha(self, t):
        """Signal scale ``alpha(t) = exp(-m(t))``: the mean of the kernel is ``alpha x_0`` (Eq. 4)."""
        return _exp(-self.m(t))

    def v(self, t):
        """Kernel variance ``v(t) = 1 - exp(-2 m(t))`` (Eq. 6), computed with ``expm1``.

        ``expm1`` keeps full relative precision at small t, where ``v ~ beta_min t`` and the
        naive ``1 - exp(-2m)`` loses digits to cancellation.
        """
        return -_expm1(-2.0 * self.m(t))

    def sigma(self, t):
        """Noise scale ``sigma(t) = sqrt(v(t))``."""
        return _sqrt(self.v(t))

    def t_of_m(self, m):
        """Inverse of :meth:`m`: the time at which ``m(t)`` equals ``m``.

        Solves ``(beta_max - beta_min)/4 t^2 + beta_min/2 t - m = 0`` for its root in [0, 1],
        written in the cancellation-free form ``t = 2m / (b/2 + sqrt(b^2/4 + a m))`` with
        ``a = beta_max - beta_min`` and ``b = beta_min``.
        """
        m_max = self.m(1.0)
        if isinstance(m, torch.Tensor):
            if bool(((m < 0) | (m > m_max * (1 + 1e-12))).any()):
                raise ValueError(f"m must lie in [0, m(1)] = [0, {m_max:g}]")
        elif not (0 <= m <= m_max * (1 + 1e-12)):
            raise ValueError(f"m must lie in [0, m(1)] = [0, {m_max:g}], got {m!r}")
        a, b = self.beta_max - self.beta_min, self.beta_min
        if b == 0:  # purely quadratic m = a t^2 / 4 (the general form would be 0/0 at m = 0)
            return 2.0 * _sqrt(m / a)
        return 2.0 * m / (0.5 * b + _sqrt(0.25 * b * b + a * m))

    # --- the SDE and its marginals (Eqs. 3-4) -----------------------------------------------
    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """Drift of the forward SDE, ``f(x, t) = -beta(t)/2 x`` (Eq. 3).

        ``t`` is a float (one time for the batch, computed in double precision) or a ``(batch,)``
        tensor.
        """
        if isinstance(t, torch.Tensor):
            return -0.5 * self.beta(as_time_tensor(t, x)) * x
        return -0.5 * self.beta(t) * x

    def diffusion(self, t):
        """Diffusion coefficient of the forward SDE, ``g(t) = sqrt(beta(t))`` (Eq. 3)."""
        return _sqrt(self.beta(t))

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``x_t ~ p(x_t | x_0) = N(alpha(t) x_0, v(t) I)`` (Eq. 4).

        Parameters
        ----------
        x0 : tensor, shape ``(batch, *data_shape)``
        t : float or tensor of shape ``(batch,)``, in (0, 1]
        noise : tensor shaped like ``x0``, optional
            The standard normal draw ``eps``; drawn with ``generator`` when omitted.

        Returns
        -------
        tensor shaped like ``x0``: ``alpha(t) x0 + sigma(t) noise``.
        """
        tt = as_time_tensor(t, x0)
        if noise is None:
            noise = randn(x0.shape, generator, x0.dtype, x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return self.alpha(tt) * x0 + self.sigma(tt) * noise

    def prior_sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
        """Draw from the prior ``N(0, I)`` that approximates ``p_1`` (``alpha(1) = exp(-m(1))``).

        With the default schedule ``alpha(1) = 6.6e-3`` and ``v(1) = 0.99996``, so the prior
        differs from the true marginal at t = 1 by well under one percent.
        """
        return randn(shape, generator, dtype, device)

    @staticmethod
    def prior_log_prob(x: torch.Tensor) -> torch.Tensor:
        """Log-density of ``N(0, I)`` at each point of ``x``; shape ``(batch,)``."""
        flat = x.reshape(x.shape[0], -1)
        d = flat.shape[1]
        return -0.5 * (flat * flat).sum(1) - 0.5 * d * math.log(2 * math.pi)

    # --- the reverse processes: reverse SDE and probability-flow ODE (Eqs. 2, 8-9) ------------
    def reverse_drift(self, score, x: torch.Tensor, t, probability_flow: bool = False) -> torch.Tensor:
        """Drift of the reverse-time process, in forward time (integrate it with ``dt < 0``).

        ``probability_flow=False``: the reverse SDE ``dx = [f - g^2 s] dt + g dw_bar`` (seed 000,
        Eq. 2 with gamma = 1; Anderson 1982), drift ``f(x, t) - g(t)^2 score(x, t)``.
        ``probability_flow=True``: the probability-flow ODE (Eq. 8), drift
        ``f - g^2/2 score = -beta(t)/2 (x + score(x, t))``, which is :meth:`ode_drift`.
        Song et al.'s ``sde.reverse(score, probability_flow=...)`` plays the same role.

        ``score`` is any callable ``score(x, t)`` returning ``grad_x log p_t(x)``.
        """
        if probability_flow:
            return self.ode_drift(score, x, t)
        tt = as_time_tensor(t, x)
        return self.drift(x, t) - self.beta(tt) * score(x, t)

    def ode_drift(self, score, x: torch.Tensor, t) -> torch.Tensor:
        """Drift of the probability-flow ODE, ``-beta(t)/2 (x + score(x, t))`` (Eq. 8).

        ``score`` is any callable ``score(x, t)`` returning ``grad_x log p_t(x)``. Dividing by
        ``dm/dt = beta(t)/2`` gives Eq. 9, ``dx/dm = -(x + s(x))``. Every ODE step of mempkg
        (:func:`mempkg.ode.ode_step`) evaluates this drift.
        """
        tt = as_time_tensor(t, x)
        return -0.5 * self.beta(tt) * (x + score(x, t))
