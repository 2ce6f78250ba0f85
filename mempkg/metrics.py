"""Distances between generations and a training set, and the copy detectors built on them.

* :func:`nearest_neighbors` -- the k nearest training points of each generation in l2
  (the raw material of every copy detector in the book).
* :func:`normalized_l2` -- Carlini et al.'s calibrated l2 (seed 000, Eq. 7): the distance to the
  nearest training image divided by ``alpha`` times the mean distance to the ``n`` nearest.
* :func:`find_copies` -- which generations copy a training image (calibrated l2 below a
  threshold) and which training images they copy: the memorized set.
* :func:`memorized_set` -- the same for a model: generate with the probability-flow ODE, then
  :func:`find_copies`. Chapters 4, 5, 11 and 12 find their memorized images with these two.
* :func:`memorized_indices` -- the sorted indices of the copied training images only.

* :func:`png_complexity` -- the length of an image's PNG encoding, a proxy for its complexity
  (seed 004, App. C.2); :func:`image_complexity` -- total variation, intensity levels or
  high-frequency DCT energy, measures that do not saturate on small images as PNG does.
* :func:`spearman_interval` -- a rank correlation with a paired bootstrap interval.
* :func:`mean_interval` -- a mean with a percentile bootstrap interval.
* :func:`auc` -- the area under the ROC curve of a score separating two groups, how every
  detector of the book is measured.
* :func:`ams_ums`, :func:`calibrate_bands`, :func:`expected_unique` -- seed 002's extraction
  metrics AMS and UMS (Eqs. 14-15), bands that mean what they say, and App. B's Eq. 150.

"""
from __future__ import annotations

import numpy as np
import torch

from dataclasses import dataclass

from ._checks import check_choice, check_positive, check_positive_int, renamed_argument, no_other_kwargs

__all__ = ["nearest_neighbors", "normalized_l2", "find_copies", "memorized_set", "Copies", "memorized_indices",
           "png_complexity", "image_complexity", "auc", "auc_interval_of", "spearman_interval",
           "mean_interval", "COPY_THRESHOLD", "ams_ums",
           "calibrate_bands", "expected_unique", "BANDS_PAPER_L2", "BANDS_PAPER_SSCD"]

#: Default threshold on the calibrated l2 below which a generation counts as a copy. The seeds
#: do not state one; chapter 5 justifies 1/3 from the (bimodal) distribution of the ratio on
#: digits and shows how the memorized set moves with it.
COPY_THRESHOLD = 1 / 3


def nearest_neighbors(x: torch.Tensor, train: torch.Tensor, n_neighbors: int = 1, chunk_size: int = 1024,
                      exclude_self: bool = False, **deprecated):
    """Euclidean distances and indices of the ``n_neighbors`` nearest training points of each row of ``x``.

    The one neighbour search of the package: copy detection (:func:`normalized_l2`) and local PCA
    (:func:`mempkg.lid.lpca`) use it. Distances are computed in the dtype of ``x``, without the
    matrix-product expansion (exact for duplicates).

    Parameters
    ----------
    x : tensor ``(batch, *data_shape)``
    train : tensor ``(n, *data_shape)``
    n_neighbors : int, 1 <= n_neighbors <= n (``k`` in versions up to 0.1)
    chunk_size : int
        Rows of ``x`` processed at once (memory ``chunk_size * n``).
    exclude_self : bool
        When ``x`` is ``train`` itself: skip each point's zero distance to itself (train-to-train
        nearest neighbours). Requires ``x`` and ``train`` to have the same length.

    Returns
    -------
    distances : tensor ``(batch, n_neighbors)``, ascending
    indices : long tensor ``(batch, n_neighbors)``, into ``train``
    """
    if "k" in deprecated:
        n_neighbors = renamed_argument(deprecated, "k", "n_neighbors", "nearest_neighbors")
    no_other_kwargs(deprecated, "nearest_neighbors")
    k = n_neighbors
    if x.shape[1:] != train.shape[1:]:
        raise ValueError(f"x and train must share the data shape, got {tuple(x.shape[1:])} and {tuple(train.shape[1:])}")
    n = train.shape[0]
    k = check_positive_int(k, "n_neighbors")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if exclude_self and x.shape[0] != n:
        raise ValueError("exclude_self=True needs x to be the training set itself (same length)")
    if k > n - int(exclude_self):
        raise ValueError(f"n_neighbors must be at most {n - int(exclude_self)} (the number of candidates), got {k}")
    xf = x.reshape(x.shape[0], -1)
    tf = train.reshape(n, -1).to(dtype=xf.dtype, device=xf.device)
    dists, idxs = [], []
    for start in range(0, xf.shape[0], chunk_size):
        d = torch.cdist(xf[start:start + chunk_size], tf, compute_mode="donot_use_mm_for_euclid_dist")
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        dk, ik = torch.topk(d, k, dim=1, largest=False)
        dists.append(dk)
        idxs.append(ik)
    return torch.cat(dists), torch.cat(idxs)


def normalized_l2(gen: torch.Tensor, train: torch.Tensor, mean_scale: float = 0.5, n_neighbors: int = 50,
                  chunk_size: int = 1024, **deprecated):
    """Carlini et al.'s calibrated l2 of each generation (seed 000, Eq. 7).

    ``l(x_hat) = |x_hat - x_1| / (c * mean_{j <= n} |x_hat - x_j|)`` where ``x_1, ..., x_n`` are
    the ``n`` nearest training images of ``x_hat`` (the mean includes the nearest one) and ``c`` is
    ``mean_scale`` (Carlini et al.'s alpha; renamed because ``alpha`` is the VP-SDE's signal scale
    everywhere else in the package). The range is [0, 1/c] (0 for an exact copy); small values mean
    that ``x_hat`` is much closer to one training image than to its other neighbours: a copy.

    Parameters
    ----------
    gen : tensor ``(batch, *data_shape)``, generations
    train : tensor ``(n, *data_shape)``
    mean_scale : float > 0 (0.5 in Carlini et al. and seed 000; ``alpha`` in versions up to 0.1)
    n_neighbors : int, size of the calibration set S (50 in Carlini et al.), at most ``n``

    Returns
    -------
    ratio : tensor ``(batch,)``
    nearest : long tensor ``(batch,)``: the index of the nearest training image
    """
    if "alpha" in deprecated:
        mean_scale = renamed_argument(deprecated, "alpha", "mean_scale", "normalized_l2")
    no_other_kwargs(deprecated, "normalized_l2")
    mean_scale = check_positive(mean_scale, "mean_scale")
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
    if n_neighbors > train.shape[0]:
        raise ValueError(f"n_neighbors must be at most the training set size {train.shape[0]}, got {n_neighbors}")
    d, idx = nearest_neighbors(gen, train, n_neighbors=n_neighbors, chunk_size=chunk_size)
    return d[:, 0] / (mean_scale * d.mean(1)), idx[:, 0]


@dataclass
class Copies:
    """Which generations copy which training images (result of :func:`find_copies`).

    Attributes
    ----------
    ratio : tensor ``(n_gen,)``, the calibrated l2 of each generation (:func:`normalized_l2`)
    nearest : long tensor ``(n_gen,)``, the index of its nearest training image
    is_copy : bool tensor ``(n_gen,)``, ``ratio < threshold``
    memorized : long tensor, the sorted distinct training indices copied at least once
    counts : long tensor, how many generations copy each of ``memorized``
    threshold : float
    samples : tensor ``(n_gen, *data_shape)`` or None, the generations (kept by :func:`memorized_set`)
    """

    ratio: torch.Tensor
    nearest: torch.Tensor
    is_copy: torch.Tensor
    memorized: torch.Tensor
    counts: torch.Tensor
    threshold: float
    samples: torch.Tensor | None = None

    @property
    def rate(self) -> float:
        """The share of generations that are copies."""
        return self.is_copy.double().mean().item()

    def memorized_mask(self, n_train: int) -> torch.Tensor:
        """A bool tensor ``(n_train,)`` marking the memorized training images."""
        mask = torch.zeros(n_train, dtype=torch.bool)
        mask[self.memorized.cpu()] = True
        return mask


def find_copies(gen: torch.Tensor, train: torch.Tensor, threshold: float = COPY_THRESHOLD, mean_scale: float = 0.5,
                n_neighbors: int = 50) -> Copies:
    """The memorized set a set of generations reveals: calibrated l2 below ``threshold``.

    A generation is a *copy* of its nearest training image when its calibrated l2
    (:func:`normalized_l2`, seed 000 Eq. 7) is below ``threshold``; a training image is
    *memorized* when at least one generation copies it (the book's definition, chapter 4).

    Parameters
    ----------
    gen : tensor ``(n_gen, *data_shape)``
    train : tensor ``(n, *data_shape)``
    threshold : float > 0, default :data:`COPY_THRESHOLD` (1/3)
    mean_scale, n_neighbors : as in :func:`normalized_l2`

    Returns
    -------
    :class:`Copies`.
    """
    threshold = check_positive(threshold, "threshold")
    ratio, nearest = normalized_l2(gen, train, mean_scale=mean_scale, n_neighbors=n_neighbors)
    is_copy = ratio < threshold
    memorized, counts = torch.unique(nearest[is_copy], return_counts=True)
    return Copies(ratio, nearest, is_copy, memorized, counts, threshold)


def memorized_set(score, train: torch.Tensor, sde, n_generate: int, n_steps: int = 50,
                  threshold: float = COPY_THRESHOLD, generator: torch.Generator | None = None,
                  mean_scale: float = 0.5, n_neighbors: int = 50, **sample_kwargs) -> Copies:
    """The memorized set of a model: generate ``n_generate`` samples, then :func:`find_copies`.

    Samples are drawn with :func:`mempkg.sampling.sample_ode` (``n_steps`` Heun steps on the log
    grid, then denoised) in the dtype and on the device of ``train``; ``sample_kwargs`` go to it.
    The returned :class:`Copies` keeps the samples (``.samples``).
    """
    from .sampling import sample_ode

    n_generate = check_positive_int(n_generate, "n_generate")
    threshold = check_positive(threshold, "threshold")
    sample_kwargs.setdefault("dtype", train.dtype)
    sample_kwargs.setdefault("device", train.device)
    samples = sample_ode(score, (n_generate, *train.shape[1:]), sde, n_steps=n_steps, generator=generator,
                         **sample_kwargs)
    found = find_copies(samples, train, threshold, mean_scale=mean_scale, n_neighbors=n_neighbors)
    found.samples = samples
    return found


def memorized_indices(gen: torch.Tensor, train: torch.Tensor, threshold: float = COPY_THRESHOLD, mean_scale: float = 0.5,
                      n_neighbors: int = 50, return_counts: bool = False):
    """Training images copied by at least one generation: :func:`find_copies`' ``memorized``.

    Returns the sorted unique indices into ``train`` (and, with ``return_counts``, how many
    generations copy each of them).
    """
    found = find_copies(gen, train, threshold, mean_scale=mean_scale, n_neighbors=n_neighbors)
    return (found.memorized, found.counts) if return_counts else found.memorized


def png_complexity(images: torch.Tensor) -> torch.Tensor:
    """Length in bytes of each image's lossless PNG encoding at maximum compression (level 9).

    Seed 004 (App. C.2) divides LID estimates by this length to remove image complexity as a
    confounder of memorization (simple images have low LID and are memorized more). Images are
    ``(n, c, h, w)`` in [-1, 1] (``c`` = 1 or 3), quantised to 8 bits. Seed 004 uses OpenCV's
    encoder; this uses Pillow's, so absolute lengths differ slightly (they rank images alike).

    Returns
    -------
    long tensor ``(n,)``.
    """
    import io

    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, 1 or 3, h, w), got {tuple(images.shape)}")
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    lengths = []
    for img in arr:
        pil = Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=9)
        lengths.append(len(buf.getvalue()))
    return torch.tensor(lengths)


def image_complexity(images: torch.Tensor, measure: str = "tv") -> torch.Tensor:
    """Complexity of each image by a measure that keeps resolving small images (seed 004, App. C.2).

    Seed 004 divides LID estimates by the PNG length (:func:`png_complexity`). At 8x8 most
    images are incompressible and PNG saturates at its maximum length (chapter 11 measures the
    share), so it cannot rank them; these measures do not saturate.

    ``measure="png"``
        :func:`png_complexity`.
    ``measure="tv"``
        Anisotropic total variation ``sum |x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|`` over
        pixels and channels, in the images' units: 0 for a flat image.
    ``measure="levels"``
        The number of distinct 8-bit intensities (the quantisation of :func:`png_complexity`),
        over all channels: 1 for a flat image.
    ``measure="dct"``
        The share of the energy of the orthonormal 2-D DCT-II (per channel) at frequencies
        ``i / h + j / w >= 1/2``: 0 for a flat image, 1 for a +-1 checkerboard.

    Parameters
    ----------
    images : tensor ``(n, c, h, w)`` in [-1, 1]
    measure : str, one of ``"png"``, ``"tv"``, ``"levels"``, ``"dct"``

    Returns
    -------
    float64 tensor ``(n,)`` (``"png"``: its long tensor).
    """
    check_choice(measure, "measure", ("png", "tv", "levels", "dct"))
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, c, h, w), got {tuple(images.shape)}")
    if measure == "png":
        return png_complexity(images)
    x = images.detach().double().cpu()
    if measure == "tv":
        return (x.diff(dim=-1).abs().sum((1, 2, 3)) + x.diff(dim=-2).abs().sum((1, 2, 3)))
    if measure == "levels":
        q = ((x.clamp(-1, 1) + 1) * 127.5).round().flatten(1)
        return torch.tensor([float(row.unique().numel()) for row in q], dtype=torch.float64)
    from scipy import fft

    energy = torch.from_numpy(fft.dctn(x.numpy(), axes=(2, 3), norm="ortho")) ** 2
    h, w = x.shape[2:]
    freq = torch.arange(h, dtype=torch.float64)[:, None] / h + torch.arange(w, dtype=torch.float64) / w
    total = energy.sum((1, 2, 3))
    high = energy[..., freq >= 0.5].sum((1, 2))
    return torch.where(total > 0, high / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _rank_auc(pos, neg, axis=-1):
    """AUC of the scores ``pos`` over ``neg`` from ranks (Mann-Whitney U over pairs, ties one half).

    The one AUC computation of the package, O(n log n); vectorised over leading axes for the
    bootstrap of :func:`auc_interval`.
    """
    from scipy import stats

    n_pos, n_neg = pos.shape[axis], neg.shape[axis]
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=axis), axis=axis)
    u = ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _scores(values, name: str) -> np.ndarray:
    """A flat float64 array of scores; ValueError naming ``name`` when one is NaN."""
    out = np.asarray(torch.as_tensor(values, dtype=torch.float64).flatten())
    if np.isnan(out).any():
        raise ValueError(f"{name} holds {int(np.isnan(out).sum())} NaN score(s): an AUC needs every score ordered")
    return out


def auc(positive, negative) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative.

    Ties count one half (the Mann-Whitney U statistic divided by the number of pairs). 0.5 is chance,
    1 a perfect separation; to flag positives by *low* scores, pass the negated scores. Computed
    from ranks in O(n log n) time and O(n) memory (50,000 against 50,000 scores: 0.1 s;
    the pairwise comparison it replaces held 2.5e9 pairs, 20 GB); equal to scikit-learn's
    ``roc_auc_score`` on the pooled scores (``tests/test_metrics.py``).

    Parameters
    ----------
    positive, negative : 1-d tensors or arrays of scores, without NaN

    Raises
    ------
    ValueError
        When either holds no score or a NaN (the message names which).
    """
    pos, neg = _scores(positive, "positive"), _scores(negative, "negative")
    if pos.size == 0 or neg.size == 0:
        raise ValueError("positive and negative must each hold at least one score")
    return float(_rank_auc(pos, neg))


def auc_interval_of(positive, negative, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """:func:`auc_interval` for the arguments of :func:`auc`: scores of positives and of negatives."""
    positive, negative = _scores(positive, "positive"), _scores(negative, "negative")
    labels = np.r_[np.ones(positive.size, dtype=bool), np.zeros(negative.size, dtype=bool)]
    return auc_interval(np.r_[positive, negative], labels, n_boot=n_boot, level=level, seed=seed)


def auc_interval(scores, labels, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """AUC of ``scores`` for the boolean ``labels`` with a percentile bootstrap interval: ``(auc, low, high)``.

    Positives and negatives are resampled separately (``scipy.stats.bootstrap`` with two samples), so
    every resample keeps both classes at their sizes; each resample's AUC comes from ranks
    (Mann-Whitney, ties one half, the computation of :func:`auc`), O(n log n). Larger scores flag
    positives; negate a measure that flags them by low values. NaN scores raise ValueError.
    """
    from scipy import stats

    scores = _scores(scores, "scores")
    labels = np.asarray(torch.as_tensor(labels).flatten()).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length, got {scores.shape} and {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError("labels must hold both positives and negatives")
    n_boot = check_positive_int(n_boot, "n_boot")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")

    pos, neg = scores[labels], scores[~labels]
    value = float(_rank_auc(pos, neg))
    if np.ptp(scores) == 0 or value in (0.0, 1.0):     # every resample gives the same AUC
        return value, value, value
    boot = stats.bootstrap((pos, neg), _rank_auc, vectorized=True, n_resamples=n_boot, confidence_level=level,
                           method="percentile", random_state=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    return value, float(low), float(high)


def mean_interval(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Mean of ``values`` with a percentile bootstrap interval (``scipy.stats.bootstrap``).

    Returns ``(mean, low, high)``; the interval is ``nan`` with fewer than two values (and the
    mean too when there are none). NaN values raise ValueError.
    """
    from scipy import stats

    values = _scores(values, "values")
    n_boot = check_positive_int(n_boot, "n_boot")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if values.size < 2:
        mean = float(values.mean()) if values.size else float("nan")
        return mean, float("nan"), float("nan")
    ci = stats.bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=level,
                         method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return float(values.mean()), float(ci.low), float(ci.high)


def spearman_interval(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Spearman rank correlation of paired ``a`` and ``b`` with a percentile bootstrap interval.

    The pairs are resampled together (``scipy.stats.bootstrap``, ``paired=True``). Returns
    ``(rho, low, high)``; ``nan`` throughout when either input is constant (the correlation is
    undefined then). NaN values raise ValueError.
    """
    from scipy import stats

    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"a and b must be paired, with at least 3 values, got {a.shape} and {b.shape}")
    n_boot = check_positive_int(n_boot, "n_boot")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), float("nan")

    def rho(x, y, axis=-1):
        rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
        rx = rx - rx.mean(axis=axis, keepdims=True)
        ry = ry - ry.mean(axis=axis, keepdims=True)
        den = np.sqrt((rx ** 2).sum(axis=axis) * (ry ** 2).sum(axis=axis))
        return (rx * ry).sum(axis=axis) / np.where(den > 0, den, np.inf)

    value = float(rho(a, b))
    boot = stats.bootstrap((a, b), rho, paired=True, vectorized=True, n_resamples=n_boot,
                           confidence_level=level, method="percentile",
                           random_state=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    return value, float(low), float(high)


# --- AMS and UMS (seed 002, Eqs. 14-15; App. B) -------------------------------------------------
# Written for chapter 7; extend here rather than duplicating.

#: Seed 002's bands for Carlini's normalized l2 (lower is more similar), as written in Section 5.1.
#: Read literally they leave every close copy (l < 1.35) outside all bands; chapter 7 shows it.
BANDS_PAPER_L2 = {"low": (1.5, 10.0), "mid": (1.4, 1.5), "high": (1.35, 1.4)}
#: Seed 002's bands for SSCD similarity (higher is more similar), Section 5.1.
BANDS_PAPER_SSCD = {"low": (0.4, 0.5), "mid": (0.5, 0.6), "high": (0.6, 1.0)}


def ams_ums(gamma, nearest, low: float, high: float, all_matches: bool = False):
    """AMS and UMS of a set of generations in the band ``low <= gamma < high`` (seed 002, Eqs. 14-15).

    Parameters
    ----------
    gamma : tensor ``(n_gen,)``, each generation's similarity or distance to its matched training
        image (e.g. :func:`normalized_l2`); or ``(n_gen, k)`` with ``all_matches=True``
    nearest : long tensor ``(n_gen,)``, the index of that image; or ``(n_gen, k)``
    low, high : the band; half-open ``[low, high)`` so that adjacent bands do not share a point
        (the paper writes both ends inclusive)
    all_matches : bool
        Eq. 15 as written: ``phi`` collects *every* training image ``j`` in the band, not only the
        nearest. With a distance whose band covers ordinary neighbour distances this counts dozens
        of images per generation and UMS can exceed AMS (or 1), which no row of the paper's Table 1
        shows; so the default counts the nearest match only. Pass ``gamma`` and ``nearest`` for the
        ``k`` nearest images to use the literal reading.

    Returns
    -------
    ams : float, the share of generations with their nearest match in the band (Eq. 14)
    ums : float, the number of distinct training images matched in the band, over ``n_gen`` (Eq. 15)
    """
    gamma, nearest = torch.as_tensor(gamma), torch.as_tensor(nearest)
    if not low <= high:
        raise ValueError(f"low must be at most high, got low={low!r}, high={high!r}")
    if gamma.shape != nearest.shape:
        raise ValueError(f"gamma and nearest must have the same shape, got {tuple(gamma.shape)} and {tuple(nearest.shape)}")
    if gamma.ndim != (2 if all_matches else 1) or gamma.shape[0] == 0:
        raise ValueError(f"gamma must have shape ({'n_gen, k' if all_matches else 'n_gen'}) with n_gen >= 1, "
                         f"got {tuple(gamma.shape)}")
    inside = (gamma >= low) & (gamma < high)
    n_gen = gamma.shape[0]
    first = inside if gamma.ndim == 1 else inside[:, 0]
    return first.double().mean().item(), len(nearest[inside].unique()) / n_gen


def calibrate_bands(heldout_gamma, false_positive_rate: float = 0.01, high: float = COPY_THRESHOLD,
                    mid: float = 0.5) -> dict:
    """Bands of the calibrated l2 that mean what their names say (chapter 7).

    ``high``: a copy (``l < 1/3``, the book's threshold); ``mid``: ``[1/3, 1/2)``; ``low``: from
    ``1/2`` to the ``false_positive_rate`` quantile of ``heldout_gamma``, the calibrated l2 of images
    no model saw, so that a model that memorizes nothing puts about that share in the low band.
    """
    heldout_gamma = torch.as_tensor(heldout_gamma, dtype=torch.float64).flatten()
    if not 0 < false_positive_rate < 1:
        raise ValueError(f"false_positive_rate must lie in (0, 1), got {false_positive_rate!r}")
    if heldout_gamma.numel() == 0:
        raise ValueError("heldout_gamma must hold at least one value")
    q = torch.quantile(heldout_gamma, false_positive_rate).item()
    return {"low": (mid, max(q, mid)), "mid": (high, mid), "high": (0.0, high)}


def expected_unique(p, n_gen, return_variance: bool = False):
    """Expected number of distinct memorized images among ``n_gen`` generations (seed 002, App. B, Eq. 150).

    ``E[N_umem] = sum_i [1 - (1 - p_i)^N_G]``, where ``p_i`` is the probability that one generation
    copies image ``i``. Computed as ``-expm1(N_G log1p(-p_i))`` (accurate for tiny ``p_i``).
    ``n_gen`` may be an int or a tensor of several values (the result then has its shape).

    With ``return_variance``, also
    ``Var N_umem = sum_i q_i (1 - q_i) + sum_{i != j} [(1 - p_i - p_j)^N_G - (1 - p_i)^N_G (1 - p_j)^N_G]``
    with ``q_i = 1 - (1 - p_i)^N_G`` (the covariances of multinomial sampling, all <= 0).
    """
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    if bool((p < 0).any()) or float(p.sum()) > 1 + 1e-9:
        raise ValueError("p must be probabilities >= 0 whose sum is at most 1")
    n = torch.as_tensor(n_gen, dtype=torch.float64)
    if bool((n < 0).any()):
        raise ValueError(f"n_gen must be >= 0, got {n_gen!r}")
    log_miss = torch.log1p(-p.clamp(max=1.0))                       # log(1 - p_i)
    q = -torch.expm1(n[..., None] * log_miss)                        # P(image i is produced at least once)
    mean = q.sum(-1)
    if not return_variance:
        return mean
    pair = torch.log1p(-(p[:, None] + p[None, :]).clamp(max=1.0))    # log(1 - p_i - p_j)
    both_missed = torch.exp(n[..., None, None] * pair)
    each_missed = torch.exp(n[..., None, None] * (log_miss[:, None] + log_miss[None, :]))
    cov = both_missed - each_missed
    cov = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    return mean, (q * (1 - q)).sum(-1) + cov.sum((-2, -1))


def sample_unique_counts(p, n_gen, n_replicates: int = 200, seed: int = 0):
    """Monte Carlo of App. B: distinct memorized images among ``n_gen`` generations, ``n_replicates`` times.

    Each generation copies image ``i`` with probability ``p_i`` and nothing with ``1 - sum_i p_i``;
    the counts per image are one multinomial draw. Returns an int array ``(len(n_gen), n_replicates)``
    (or ``(n_replicates,)`` for a scalar ``n_gen``), to set beside :func:`expected_unique`.
    """
    p = np.asarray(torch.as_tensor(p, dtype=torch.float64).flatten())
    if (p < 0).any() or p.sum() > 1 + 1e-9:
        raise ValueError("p must be probabilities >= 0 whose sum is at most 1")
    if n_replicates < 1:
        raise ValueError(f"n_replicates must be >= 1, got {n_replicates}")
    sizes = np.atleast_1d(np.asarray(n_gen))
    if (sizes < 0).any() or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"n_gen must be integers >= 0, got {n_gen!r}")
    rng = np.random.default_rng(seed)
    probs = np.append(p, max(0.0, 1.0 - p.sum()))
    probs /= probs.sum()
    out = np.stack([(rng.multinomial(int(n), probs, size=n_replicates)[:, :-1] > 0).sum(1) for n in sizes])
    return out[0] if np.ndim(n_gen) == 0 else out
