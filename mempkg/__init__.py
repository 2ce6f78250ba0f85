"""mempkg: measuring and explaining memorization in diffusion models.

The companion library of the book *Memorization in Diffusion Models*. The central abstraction is
a score function, any callable ``score(x, t)`` returning ``grad_x log p_t(x)`` for ``x`` of shape
``(batch, *data_shape)``; every estimator takes one, so exact scores and trained networks are
interchangeable.

Modules (one idea each):

* :mod:`mempkg.sde` -- the VP-SDE schedule, kernel and probability-flow drift (seed 000, Eqs. 3-9)
* :mod:`mempkg.score` -- exact scores: empirical (Eq. 11), Gaussian, mixtures
* :mod:`mempkg.ode` -- Euler / Heun integration of the probability-flow ODE
* :mod:`mempkg.sampling` -- forward-SDE simulation, ODE and SDE samplers, Tweedie denoising
* :mod:`mempkg.data` -- digits, synthetic sets, local CIFAR-10
* :mod:`mempkg.metrics` -- nearest-neighbour distances to a training set
* :mod:`mempkg.plotting`, :mod:`mempkg.report`, :mod:`mempkg.run` -- the book's figures,
  closing tables and papermill runs
"""
from . import data, metrics, ode, plotting, report, sampling, score, sde
from .ode import integrate
from .score import EmpiricalScore, GaussianScore, MixtureScore
from .sde import VPSDE

__version__ = "0.1.0"

__all__ = [
    "data",
    "metrics",
    "ode",
    "plotting",
    "report",
    "sampling",
    "score",
    "sde",
    "integrate",
    "EmpiricalScore",
    "GaussianScore",
    "MixtureScore",
    "VPSDE",
]
