"""mempkg: measuring and explaining memorization in diffusion models.

The companion library of the book *Memorization in Diffusion Models*. The central abstraction is
a score function, any callable ``score(x, t)`` returning ``grad_x log p_t(x)`` for ``x`` of shape
``(batch, *data_shape)``; every estimator takes one, so exact scores and trained networks are
interchangeable.

Modules (one idea each):

* :mod:`mempkg.sde` -- the VP-SDE schedule, kernel, and every drift: forward SDE, reverse SDE,
  probability-flow ODE (seed 000, Eqs. 2-9)
* :mod:`mempkg.score` -- exact scores: empirical (Eq. 11), Gaussian, mixtures; ``score_jvp``
* :mod:`mempkg.ode` -- every integration step: Euler / Heun ODE steps (and their tangent maps),
  Euler-Maruyama SDE steps, ``integrate``
* :mod:`mempkg.sampling` -- forward-SDE simulation, ODE and SDE samplers, Tweedie denoising
* :mod:`mempkg.volume` -- volume growth along the probability-flow ODE (seed 000, Eq. 13, Alg. 1)
* :mod:`mempkg.lid` -- local intrinsic dimension: FLIPD, normal bundle, local PCA (seed 004)
* :mod:`mempkg.guidance` -- classifier-free guidance and the CFG memorization metrics (seed 004)
* :mod:`mempkg.pointwise` -- pointwise and semantic memorization, Proposition 1 and Theorem 2 of
  seed 002 computed exactly (Section 3, App. A)
* :mod:`mempkg.side` -- the SIDE attack: classifiers, TDKD, the oracle noisy posterior, guided
  sampling (seed 002, Section 4)
* :mod:`mempkg.nets`, :mod:`mempkg.train`, :mod:`mempkg.checkpoints` -- small score networks,
  denoising score matching, and the book's committed trained models
* :mod:`mempkg.data` -- digits, synthetic sets, local CIFAR-10
* :mod:`mempkg.metrics` -- the one nearest-neighbour search, Carlini's calibrated l2, memorized sets
* :mod:`mempkg.retrieval` -- replication by retrieval: cosine and split-product similarity, feature
  extractors, calibrated replication rates, a benchmark of known replicas (seed 003)
* :mod:`mempkg.audit` -- every measure per training image of one model, costed; ``python -m mempkg audit``
* :mod:`mempkg.adapters` -- a diffusers UNet2DModel and its scheduler as a score (imported on use)
* :mod:`mempkg.plotting`, :mod:`mempkg.report`, :mod:`mempkg.run` -- the book's figures,
  closing tables and papermill runs (imported on first use)

Every function takes its arguments in the order ``score, x, sde, ...`` (the score, the points, the
SDE); the book's notation page lists the names used throughout.
"""
import importlib

from . import (checkpoints, data, guidance, lid, metrics, nets, ode, pointwise, retrieval, sampling, score, sde, side,
               train, volume)
from .ode import integrate
from .score import EmpiricalScore, GaussianScore, GuidedScore, MixtureScore, NetworkScore, SphereScore
from .sde import VPSDE
from .volume import volume_growth

__version__ = "0.2.0"

# The book's helpers (figures, closing tables, the papermill runner) import matplotlib, seaborn,
# pandas and papermill: they load on first use, so that `from mempkg import VPSDE` stays fast.
_LAZY = ("plotting", "report", "run")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "checkpoints",
    "data",
    "guidance",
    "lid",
    "metrics",
    "nets",
    "ode",
    "plotting",
    "pointwise",
    "report",
    "retrieval",
    "side",
    "run",
    "sampling",
    "score",
    "sde",
    "train",
    "volume",
    "integrate",
    "volume_growth",
    "NetworkScore",
    "EmpiricalScore",
    "GuidedScore",
    "GaussianScore",
    "MixtureScore",
    "SphereScore",
    "VPSDE",
]
