"""Every memorization measure of the book, for each training image of one model (chapter 13, ``mempkg audit``).

The four papers each score training images (or generations) in their own way; this module puts
them side by side behind one call. :func:`measure_table` takes a score function, its training set
and the SDE and returns one row per training image and one column per measure, each oriented by
:data:`MEASURES` (``memorized="high"``: a larger value means more likely reproduced), together with
what each measure cost: seconds and score evaluations (rows passed to the score, JVPs included).

Measures that look at the model directly (volume growth, FLIPD, normal bundle) evaluate the score
at the training images. Measures that look at what the model *generates* (copies, distances,
retrieval similarities, local PCA of generations) share one pool of generations, drawn once with
:func:`mempkg.sampling.sample_ode` (or passed in as ``gen``). ``distance_to_mean`` is a negative
control: nothing in the papers predicts it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import lid, retrieval
from ._checks import check_positive_int
from .metrics import COPY_THRESHOLD, find_copies, nearest_neighbors
from .sampling import sample_ode
from .volume import volume_growth

__all__ = ["Measure", "MEASURES", "DEFAULT_MEASURES", "CountingScore", "generate_pool", "measure_table"]


class CountingScore:
    """Wrap ``score`` and count its evaluations: the cost of a measure.

    ``evaluations`` adds the rows of ``x`` of every call (and of ``predict_eps``, the epsilon
    reading FLIPD uses) and every tangent of a Jacobian-vector product
    (:func:`mempkg.score.score_jvp` reports them through :meth:`count_tangents`): a JVP along ``k``
    directions at ``b`` points counts ``b k``, its primal pass ``b``. A backward pass (FLIPD's
    Hutchinson probe) is not counted separately; it costs about two forward passes.
    """

    def __init__(self, score):
        self.score, self.evaluations = score, 0

    def __call__(self, x, t):
        self.evaluations += x.shape[0]
        return self.score(x, t)

    def count_tangents(self, n: int):
        self.evaluations += n

    def __getattr__(self, name):          # everything else (parameterization, jvp, devices) from the score
        attr = getattr(self.__dict__["score"], name)
        if name == "predict_eps" and callable(attr):
            def counted(x, *args, **kwargs):
                self.evaluations += x.shape[0]
                return attr(x, *args, **kwargs)
            return counted
        return attr


@dataclass(frozen=True)
class Measure:
    """One per-image measure: ``fn(ctx, x) -> (batch,)`` and its orientation.

    ``memorized`` is ``"high"`` or ``"low"``: which end marks a memorized image, fixed before any
    data is seen (from the paper that proposes the measure). ``needs_generations`` measures use the
    shared pool; ``source`` names the paper and equation.
    """

    fn: Callable
    memorized: str
    needs_generations: bool
    source: str


def _volume(ctx, x, **kw):
    out = volume_growth(ctx["score"], x, ctx["sde"], generator=ctx["generator"], **kw)
    return out.log_growth[:, -1]


def _cheap_volume(ctx, x):
    return _volume(ctx, x, n_axes=1, n_steps=1, method="jvp", t_start=ctx["t_start"], t_end=ctx["t_cheap"])


def _full_volume(ctx, x):
    return _volume(ctx, x, n_axes=ctx["n_axes"], n_steps=ctx["n_steps"], method="qr", sigma=ctx["sigma"],
                   ode_method="heun", t_start=ctx["t_start"])


def _step_volume(ctx, x):
    """All axes, one short step from ``alpha(t0) x`` at ``t0``: to first order FLIPD's trace term (chapter 13)."""
    d = x[0].numel()
    t0 = ctx["t0"]
    return _volume(ctx, ctx["sde"].alpha(t0) * x, n_axes=d, n_steps=1, method="jvp", grid="uniform",
                   t_start=t0, t_end=t0 + 1e-4)


def _flipd(ctx, x):
    return lid.flipd(ctx["score"], x, ctx["sde"], t0=ctx["t0"], n_probes=ctx["n_probes"], generator=ctx["generator"])


def _normal_bundle(ctx, x):
    return lid.normal_bundle(ctx["score"], x, ctx["sde"], t0=ctx["t0_bundle"], generator=ctx["generator"]).double()


def _nearest_generation(ctx, x):
    """Distance from each training image to its nearest generation (pixels)."""
    d, _ = nearest_neighbors(x, ctx["gen"], n_neighbors=1)
    return d[:, 0]


def _copies(ctx, x):
    """Generations whose nearest training image is this one, with Carlini's l below the threshold."""
    if "_copy_counts" not in ctx:           # one search over the pool, shared by the chunks
        train = ctx["train"]
        found = find_copies(ctx["gen"], train, ctx["threshold"], n_neighbors=min(50, len(train)))
        ctx["_copy_counts"] = torch.zeros(len(train), dtype=torch.long)
        ctx["_copy_counts"][found.memorized.cpu()] = found.counts.cpu()
    return ctx["_copy_counts"][ctx["index"]].double()


def _retrieval(similarity):
    def fn(ctx, x):
        if "_gen_feats" not in ctx:
            ctx["_gen_feats"] = ctx["extractor"](ctx["gen"].float())
        values, _ = retrieval.top1(ctx["extractor"](x.float()), ctx["_gen_feats"], similarity=similarity,
                                   normalize="chunk")
        return values.double()
    return fn


def _default_extractor(train):
    """Mean-centred pixels in 4x4 patches (:func:`mempkg.retrieval.pixel_extractor`) for images whose
    sides 4 divides; otherwise the centred vector as one chunk (split product = cosine then)."""
    center = train.float().mean(0).cpu()
    if center.ndim == 3 and center.shape[1] % 4 == 0 and center.shape[2] % 4 == 0:
        return retrieval.pixel_extractor(center=center)
    return retrieval.Extractor(lambda x: (x.float() - center.to(x.device)).flatten(1), "centred pixels")


def _lpca_generations(ctx, x):
    n = min(ctx["n_neighbors"], len(ctx["gen"]))
    return lid.lpca(ctx["gen"].reshape(len(ctx["gen"]), -1), x.reshape(len(x), -1), n_neighbors=n).double()


def _distance_to_mean(ctx, x):
    return (x - ctx["train"].mean(0)).flatten(1).norm(dim=1).double()


MEASURES: dict[str, Measure] = {
    "volume_growth_cheap": Measure(_cheap_volume, "high", False, "seed 000, Eq. 13: one axis, one step"),
    "volume_growth": Measure(_full_volume, "high", False, "seed 000, Eq. 13 and Algorithm 1 (QR)"),
    "volume_growth_step": Measure(_step_volume, "high", False,
                                  "seed 000, Eq. 13: all axes, one step at t0 (FLIPD's trace term)"),
    "flipd": Measure(_flipd, "low", False, "seed 004, Eq. 6"),
    "normal_bundle": Measure(_normal_bundle, "low", False, "seed 004, Eqs. 7-8"),
    "copies": Measure(_copies, "high", True, "Carlini et al.: generations with l < 1/3"),
    "nearest_generation": Measure(_nearest_generation, "low", True, "distance to the nearest generation"),
    "cosine": Measure(_retrieval("cosine"), "high", True, "seed 003: top-1 cosine"),
    "split_product": Measure(_retrieval("split_product"), "high", True, "seed 003: split product, each chunk unit-normalised"),
    "lpca_generations": Measure(_lpca_generations, "low", True, "seed 004: LID_* of the generations"),
    "distance_to_mean": Measure(_distance_to_mean, "low", False, "negative control"),
}
DEFAULT_MEASURES = tuple(MEASURES)


def generate_pool(score, shape, sde, n_generate: int, n_steps: int = 50, generator=None, device="cpu",
                  dtype=torch.float32, progress: bool = False):
    """The shared pool of generations: ``n_generate`` probability-flow ODE samples (Heun, log grid)."""
    n_generate = check_positive_int(n_generate, "n_generate")
    return sample_ode(score, (n_generate, *shape), sde, n_steps=n_steps, generator=generator, device=device,
                      dtype=dtype, progress=progress)


def _progress_bar(total: int, progress: bool):
    """A tqdm bar when asked for (imported then: tqdm.auto warns in kernels without widgets)."""
    if progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="audit", unit="image")
    from types import SimpleNamespace

    return SimpleNamespace(update=lambda n: None, close=lambda: None)


def measure_table(score, train: torch.Tensor, sde, measures=DEFAULT_MEASURES, gen: torch.Tensor | None = None,
                  n_generate: int = 2000, n_sample_steps: int = 50, t0: float = 0.05, t0_bundle: float = 0.1,
                  n_probes: int | None = 1, n_axes: int = 8, n_steps: int = 100, sigma: float = 0.05,
                  t_start: float = 1e-3, t_cheap: float = 0.01, threshold: float = COPY_THRESHOLD,
                  n_neighbors: int = 100, extractor=None, chunk_size: int = 256, seed: int = 0,
                  progress: bool = False):
    """Every measure in ``measures`` for every image of ``train``: ``(table, cost)``.

    Parameters
    ----------
    score : callable ``score(x, t)``; train : tensor ``(n, *data_shape)``; sde : VPSDE
    measures : names from :data:`MEASURES`
    gen : tensor ``(m, *data_shape)``, optional: the pool of generations (else ``n_generate`` drawn
        with ``n_sample_steps`` steps, once, when a measure needs it)
    t0, n_probes : FLIPD's noise level and Hutchinson probes; t0_bundle : the normal bundle's
    n_axes, n_steps, sigma, t_start : the full volume growth (QR, Heun, log grid); t_cheap : the end
        of the cheap one-step, one-axis growth
    threshold : Carlini's copy threshold; n_neighbors : local PCA's neighbourhood
    extractor : :class:`mempkg.retrieval.Extractor` for the retrieval measures (default pixels)
    chunk_size : training images per chunk; seed : seeds the axes, probes and generations

    Returns
    -------
    table : DataFrame, one row per training image, one column per measure (float64)
    cost : DataFrame indexed by measure: ``seconds``, ``score_evaluations``, ``memorized``, ``source``
        (the pool's cost is the row ``"generations"``)
    """
    import pandas as pd

    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {sorted(MEASURES)}")
    if len(measures) == 0:
        raise ValueError("measures must name at least one measure")
    if train.ndim < 2 or len(train) == 0:
        raise ValueError(f"train must be (n, *data_shape) with n >= 1, got {tuple(train.shape)}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    n_generate = check_positive_int(n_generate, "n_generate")
    if gen is not None and tuple(gen.shape[1:]) != tuple(train.shape[1:]):
        raise ValueError(f"gen has images of shape {tuple(gen.shape[1:])}, train {tuple(train.shape[1:])}")
    counting = CountingScore(score)
    generator = torch.Generator(device=train.device).manual_seed(seed)
    cost = {}
    if gen is None and any(MEASURES[m].needs_generations for m in measures):
        start = time.perf_counter()
        gen = generate_pool(counting, tuple(train.shape[1:]), sde, n_generate, n_sample_steps, generator,
                            train.device, train.dtype, progress)
        cost["generations"] = {"seconds": time.perf_counter() - start, "score_evaluations": counting.evaluations,
                               "memorized": "", "source": f"{len(gen)} ODE samples"}
    ctx = {"score": counting, "sde": sde, "train": train, "gen": gen, "generator": generator, "t0": t0,
           "t0_bundle": t0_bundle, "n_probes": n_probes, "n_axes": n_axes, "n_steps": n_steps, "sigma": sigma,
           "t_start": t_start, "t_cheap": t_cheap, "threshold": threshold, "n_neighbors": n_neighbors,
           "extractor": extractor or _default_extractor(train)}
    columns = {}
    bar = _progress_bar(len(measures) * len(train), progress)
    for name in measures:
        counting.evaluations = 0
        start = time.perf_counter()
        parts = []
        for lo in range(0, len(train), chunk_size):
            ctx["index"] = torch.arange(lo, min(lo + chunk_size, len(train)))
            x = train[lo:lo + chunk_size]
            parts.append(MEASURES[name].fn(ctx, x).detach().double().cpu())
            bar.update(len(x))
        columns[name] = torch.cat(parts).numpy()
        cost[name] = {"seconds": time.perf_counter() - start, "score_evaluations": counting.evaluations,
                      "memorized": MEASURES[name].memorized, "source": MEASURES[name].source}
    bar.close()
    table = pd.DataFrame(columns)
    table.index.name = "image"
    return table, pd.DataFrame.from_dict(cost, orient="index")


def memorization_ranks(table):
    """Rank each measure so that 1 is the image it calls most memorized (ties share the mean rank)."""
    ranks = table.copy()
    for name in table.columns:
        ranks[name] = table[name].rank(ascending=MEASURES[name].memorized == "low")
    return ranks
