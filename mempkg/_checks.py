"""Argument validation shared by every module of mempkg.

Every public function validates its arguments with these helpers, so that a bad parameter raises
a ``ValueError`` that names the parameter and says what is allowed, in the same words everywhere.
"""
from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import torch

__all__ = ["check_positive_int", "check_time", "check_positive", "check_choice", "as_time_tensor"]


def check_positive_int(value, name: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    low = 0 if allow_zero else 1
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(value, name: str, choices) -> str:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_time(t, name: str = "t", *, allow_zero: bool = False):
    """Raise ``ValueError`` naming ``name`` unless every time in ``t`` lies in (0, 1].

    ``t`` may be a Python number or a tensor. The VP-SDE is defined on [0, 1]; every quantity
    that divides by v(t) (scores, ODE steps) excludes t = 0, where v vanishes. The schedule
    functions themselves (beta, m, alpha, v) are fine at t = 0: pass ``allow_zero=True``.
    """
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            return t
        low_ok = (t >= 0) if allow_zero else (t > 0)
        if not bool((low_ok & (t <= 1)).all()):
            raise ValueError(f"{name} must lie in {interval}, got values from {t.min().item():g} to {t.max().item():g}")
        return t
    if isinstance(t, bool) or not isinstance(t, Real) or not ((0 <= t) if allow_zero else (0 < t)) or not t <= 1:
        raise ValueError(f"{name} must lie in {interval}, got {t!r}")
    return float(t)


def as_time_tensor(t, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return ``t`` as a tensor of shape ``(batch, 1, ..., 1)`` that broadcasts against ``x``.

    ``t`` is a float (one time for the whole batch) or a tensor of shape ``()`` or ``(batch,)``.
    The result has the dtype and device of ``x``.
    """
    check_time(t, name)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must be a float or a tensor of shape (batch,) = ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def _is_sde(obj) -> bool:
    return hasattr(obj, "ode_drift") and hasattr(obj, "perturb")


def legacy_sde_first(func_name: str, a, b, c):
    """Accept the deprecated argument order ``(sde, score, x)`` beside ``(score, x, sde)``.

    Every function of mempkg takes ``score, x, sde`` in this order (see the notation page of the
    book). Versions up to 0.1 took ``sde, score, x`` in the ODE and sampling functions; such calls
    still work, with a ``DeprecationWarning``. Returns ``(score, x, sde)``.
    """
    if _is_sde(a) and not _is_sde(c):
        warnings.warn(f"{func_name}(sde, score, x, ...) is deprecated; call {func_name}(score, x, sde, ...)",
                      DeprecationWarning, stacklevel=3)
        return b, c, a
    return a, b, c


def legacy_sde_second(func_name: str, a, b, c):
    """Accept the deprecated order ``(score, sde, x)`` beside ``(score, x, sde)``; see :func:`legacy_sde_first`."""
    if _is_sde(b) and not _is_sde(c):
        warnings.warn(f"{func_name}(score, sde, x, ...) is deprecated; call {func_name}(score, x, sde, ...)",
                      DeprecationWarning, stacklevel=3)
        return a, c, b
    return a, b, c


def renamed_argument(kwargs: dict, old: str, new: str, func_name: str, value=None):
    """Pop a deprecated keyword ``old`` from ``kwargs`` and return its value for ``new``.

    Raises ``TypeError`` for any other unexpected keyword, as Python would.
    """
    if old in kwargs:
        if value is not None:
            raise TypeError(f"{func_name}() got both {old!r} (deprecated) and {new!r}")
        warnings.warn(f"{func_name}({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=3)
        value = kwargs.pop(old)
    return value


def no_other_kwargs(kwargs: dict, func_name: str) -> None:
    if kwargs:
        raise TypeError(f"{func_name}() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
