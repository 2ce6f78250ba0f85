"""Distances between generations and a training set, and the copy detectors built on them.

* :func:`nearest_neighbors` -- the k nearest training points of each generation in l2
  (the raw material of every copy detector in the book).
* :func:`normalized_l2` -- Carlini et al.'s calibrated l2 (seed 000, Eq. 7): the distance to the
  nearest training image divided by ``alpha`` times the mean distance to the ``n`` nearest.
* :func:`memorized_indices` -- the training images that a set of generations copies, by
  thresholding the calibrated l2.

* :func:`png_complexity` -- the length of an image's PNG encoding, a proxy for its complexity
  (seed 004, App. C.2).
* :func:`auc` -- the area under the ROC curve of a score separating two groups, how every
  detector of the book is measured.

Later chapters add AMS/UMS (seed 002, Eqs. 14-15) here.
"""
from __future__ import annotations

import torch

from ._checks import check_positive, check_positive_int

__all__ = ["nearest_neighbors", "normalized_l2", "memorized_indices", "png_complexity", "auc", "COPY_THRESHOLD"]

#: Default threshold on the calibrated l2 below which a generation counts as a copy. The seeds
#: do not state one; chapter 5 justifies 1/3 from the (bimodal) distribution of the ratio on
#: digits and shows how the memorized set moves with it.
COPY_THRESHOLD = 1 / 3


def nearest_neighbors(x: torch.Tensor, train: torch.Tensor, k: int = 1, chunk_size: int = 1024, exclude_self: bool = False):
    """Euclidean distances and indices of the ``k`` nearest training points of each row of ``x``.

    Parameters
    ----------
    x : tensor ``(batch, *data_shape)``
    train : tensor ``(n, *data_shape)``
    k : int, 1 <= k <= n
    chunk_size : int
        Rows of ``x`` processed at once (memory ``chunk_size * n``).
    exclude_self : bool
        When ``x`` is ``train`` itself: skip each point's zero distance to itself (train-to-train
        nearest neighbours). Requires ``x`` and ``train`` to have the same length.

    Returns
    -------
    distances : tensor ``(batch, k)``, ascending
    indices : long tensor ``(batch, k)``, into ``train``
    """
    if x.shape[1:] != train.shape[1:]:
        raise ValueError(f"x and train must share the data shape, got {tuple(x.shape[1:])} and {tuple(train.shape[1:])}")
    n = train.shape[0]
    k = check_positive_int(k, "k")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if exclude_self and x.shape[0] != n:
        raise ValueError("exclude_self=True needs x to be the training set itself (same length)")
    if k > n - int(exclude_self):
        raise ValueError(f"k must be at most {n - int(exclude_self)} (the number of candidates), got {k}")
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


def normalized_l2(gen: torch.Tensor, train: torch.Tensor, alpha: float = 0.5, n_neighbors: int = 50, chunk_size: int = 1024):
    """Carlini et al.'s calibrated l2 of each generation (seed 000, Eq. 7).

    ``l(x_hat) = |x_hat - x_1| / (alpha * mean_{j <= n} |x_hat - x_j|)`` where ``x_1, ..., x_n`` are
    the ``n`` nearest training images of ``x_hat`` (the mean includes the nearest one). The range
    is [0, 1/alpha] (0 for an exact copy); small values mean that ``x_hat`` is much closer to one training image than
    to its other neighbours: a copy.

    Parameters
    ----------
    gen : tensor ``(batch, *data_shape)``, generations
    train : tensor ``(n, *data_shape)``
    alpha : float > 0 (0.5 in Carlini et al. and seed 000)
    n_neighbors : int, size of the calibration set S (50 in Carlini et al.), at most ``n``

    Returns
    -------
    ratio : tensor ``(batch,)``
    nearest : long tensor ``(batch,)``: the index of the nearest training image
    """
    alpha = check_positive(alpha, "alpha")
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
    if n_neighbors > train.shape[0]:
        raise ValueError(f"n_neighbors must be at most the training set size {train.shape[0]}, got {n_neighbors}")
    d, idx = nearest_neighbors(gen, train, k=n_neighbors, chunk_size=chunk_size)
    return d[:, 0] / (alpha * d.mean(1)), idx[:, 0]


def memorized_indices(gen: torch.Tensor, train: torch.Tensor, threshold: float = COPY_THRESHOLD, alpha: float = 0.5,
                      n_neighbors: int = 50, return_counts: bool = False):
    """Training images copied by at least one generation: calibrated l2 below ``threshold``.

    Returns the sorted unique indices into ``train`` (and, with ``return_counts``, how many
    generations copy each of them).
    """
    threshold = check_positive(threshold, "threshold")
    ratio, nearest = normalized_l2(gen, train, alpha=alpha, n_neighbors=n_neighbors)
    return torch.unique(nearest[ratio < threshold], return_counts=return_counts)


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


def auc(positive, negative) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative.

    Ties count one half (the Mann-Whitney U statistic divided by the number of pairs). 0.5 is chance,
    1 a perfect separation; to flag positives by *low* scores, pass the negated scores.

    Parameters
    ----------
    positive, negative : 1-d tensors or arrays of scores
    """
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("positive and negative must each hold at least one score")
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
