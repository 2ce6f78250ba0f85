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
* :mod:`mempkg.volume` -- volume growth along the probability-flow ODE (seed 000, Eq. 13, Alg. 1)
* :mod:`mempkg.lid` -- local intrinsic dimension: FLIPD, normal bundle, local PCA (seed 004)
* :mod:`mempkg.guidance` -- classifier-free guidance and the CFG memorization metrics (seed 004)
* :mod:`mempkg.nets`, :mod:`mempkg.train`, :mod:`mempkg.checkpoints` -- small score networks,
  denoising score matching, and the book's committed trained models
* :mod:`mempkg.data` -- digits, synthetic sets, local CIFAR-10
* :mod:`mempkg.metrics` -- nearest neighbours, Carlini's calibrated l2, memorized sets
* :mod:`mempkg.plotting`, :mod:`mempkg.report`, :mod:`mempkg.run` -- the book's figures,
  closing tables and papermill runs
"""
from . import checkpoints, data, guidance, lid, metrics, nets, ode, plotting, report, sampling, score, sde, train, volume
from .ode import integrate
from .score import EmpiricalScore, GaussianScore, MixtureScore, NetworkScore, SphereScore
from .sde import VPSDE
from .volume import volume_growth

__version__ = "0.1.0"

__all__ = [
    "checkpoints",
    "data",
    "guidance",
    "lid",
    "metrics",
    "nets",
    "ode",
    "plotting",
    "report",
    "sampling",
    "score",
    "sde",
    "train",
    "volume",
    "integrate",
    "volume_growth",
    "NetworkScore",
    "EmpiricalScore",
    "GaussianScore",
    "MixtureScore",
    "SphereScore",
    "VPSDE",
]
