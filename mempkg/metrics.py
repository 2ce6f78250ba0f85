"""Distances between generations and a training set.

* :func:`nearest_neighbors` -- the k nearest training points of each generation in l2
  (the raw material of every copy detector in the book).

Later chapters add Carlini et al.'s calibrated l2 (seed 000, Eq. 7), AMS/UMS (seed 002,
Eqs. 14-15) and PNG complexity (seed 004, App. C.2) here.
"""
from __future__ import annotations

import torch

from ._checks import check_positive_int

__all__ = ["nearest_neighbors"]


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
    tf = train.reshape(n, -1).to(xf.dtype)
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
