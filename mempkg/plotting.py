"""Plotting helpers shared by the chapters: one seaborn style, image grids, 2-D flow pictures.

Nothing here computes a result; it only draws what ``mempkg``'s other modules return.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = ["set_style", "image_grid", "image_pairs", "plot_flow_2d", "plot_partition_2d", "group_colors"]


def set_style(context: str = "notebook") -> None:
    """The book's display style.

    Figures: seaborn "whitegrid", colour-blind palette, 110 dpi. Tables: pandas shows whole
    cells (the closing tables hold sentences, which the default 50-character limit cuts).
    """
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": "medium", "image.cmap": "gray"})
    pd.set_option("display.max_colwidth", None)


def group_colors(n: int):
    """``n`` distinguishable colours (the colour-blind palette, extended with husl when n > 10)."""
    return sns.color_palette("colorblind", n) if n <= 10 else sns.color_palette("husl", n)


def image_grid(images: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None, padding: int = 1):
    """Show a batch of images ``(n, c, h, w)`` in [-1, 1] as one grid (torchvision's ``make_grid``).

    Returns the matplotlib axes.
    """
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, 1 or 3, h, w), got {tuple(images.shape)}")
    imgs = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    grid = make_grid(imgs, nrow=nrow, padding=padding, pad_value=1.0).permute(1, 2, 0).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * min(nrow, len(images)) + 1, 0.5 * int(np.ceil(len(images) / nrow)) + 1))
    ax.imshow(grid[..., 0] if images.shape[1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def image_pairs(top: torch.Tensor, bottom: torch.Tensor, labels=("generated", "nearest training image"), n: int = 16, axes=None):
    """Two aligned rows of images: e.g. generations above their nearest training images."""
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(0.55 * n + 1, 2.6))
    image_grid(top[:n], nrow=n, ax=axes[0], title=labels[0])
    image_grid(bottom[:n], nrow=n, ax=axes[1], title=labels[1])
    return axes


def plot_flow_2d(ax, train: torch.Tensor, start: torch.Tensor, end: torch.Tensor, paths: torch.Tensor | None = None, title: str | None = None):
    """Seed 000 Fig. 1: small sets around each training point (``start``) and their images (``end``).

    Parameters
    ----------
    train : ``(n, 2)`` training points
    start, end : ``(n, m, 2)``: for each training point, m points at the first and last time
    paths : ``(T, n, m, 2)``, optional: trajectories drawn faintly between them
    """
    colors = group_colors(train.shape[0])
    for i, c in enumerate(colors):
        if paths is not None:
            p = paths[:, i].cpu().numpy()
            for j in range(0, p.shape[1], max(1, p.shape[1] // 12)):
                ax.plot(p[:, j, 0], p[:, j, 1], color=c, lw=0.5, alpha=0.35)
        e = end[i].cpu().numpy()
        ax.plot(np.r_[e[:, 0], e[:1, 0]], np.r_[e[:, 1], e[:1, 1]], color=c, lw=1.6)
        s = start[i].cpu().numpy()
        ax.plot(np.r_[s[:, 0], s[:1, 0]], np.r_[s[:, 1], s[:1, 1]], color=c, lw=1.6)
    y = train.cpu().numpy()
    ax.scatter(y[:, 0], y[:, 1], c=colors, edgecolor="k", s=30, zorder=5)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def plot_partition_2d(ax, latent: torch.Tensor, labels: torch.Tensor, train: torch.Tensor | None = None, title: str | None = None, s: float = 2.0):
    """Latent points coloured by the training point they flow to (the regions R^(i) of seed 000)."""
    colors = np.asarray(group_colors(int(labels.max()) + 1))
    z = latent.cpu().numpy()
    ax.scatter(z[:, 0], z[:, 1], c=colors[labels.cpu().numpy()], s=s, linewidths=0, rasterized=True)
    if train is not None:
        y = train.cpu().numpy()
        ax.scatter(y[:, 0], y[:, 1], c=colors[: len(y)], edgecolor="k", s=40, zorder=5, marker="*")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax
