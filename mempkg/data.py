"""Data sets: embedded digits, seeded synthetic sets, and a local CIFAR-10 copy.

Every image set is returned as a float tensor of shape ``(n, channels, height, width)`` scaled to
[-1, 1], the range in which seed 000's sphere radius sigma = 0.05 is expressed. Every random
choice takes a ``seed`` so that chapters and tests are reproducible. Nothing here downloads:
the digits ship with scikit-learn, synthetic sets are generated, and CIFAR-10 is read from a
copy the user names.

A trained model's data are described by a :class:`DataRecipe` (a data set of :func:`load` with its
options, and optionally a :class:`Duplication` of some of its images); :func:`training_set`,
:func:`training_labels`, :func:`held_out` and :func:`duplicated_indices` build from it exactly what
the model saw, what it never saw, and which images it saw more than once. The registry of trained
models (:mod:`mempkg.checkpoints`) holds the recipes.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._checks import check_positive, check_positive_int

__all__ = [
    "load",
    "digits",
    "cifar10",
    "horizontal_flip",
    "split",
    "random_points",
    "subspace_gaussian",
    "von_mises_mixture",
    "digits_with_rare_class",
    "cifar10_with_rare_class",
    "with_rare_class",
    "Duplication",
    "DataRecipe",
    "training_set",
    "training_labels",
    "held_out",
    "duplicated_indices",
]

LOADERS = ("digits", "cifar10", "von_mises_mixture", "digits_with_rare_class", "cifar10_with_rare_class")


def _subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of size ``n`` (all indices when ``n`` is None)."""
    if n is None:
        return np.arange(n_total)
    n = check_positive_int(n, "n")
    if n > n_total:
        raise ValueError(f"n must be at most {n_total} (the size of the data set), got {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def _select_classes(labels: np.ndarray, classes, n_classes: int) -> np.ndarray:
    if classes is None:
        return np.arange(len(labels))
    classes = list(classes)
    bad = [c for c in classes if c not in range(n_classes)]
    if bad or not classes:
        raise ValueError(f"classes must be a non-empty list of labels in 0..{n_classes - 1}, got {classes}")
    return np.flatnonzero(np.isin(labels, classes))


def horizontal_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left to right; ``x`` has shape ``(n, c, h, w)``."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (n, channels, height, width), got {tuple(x.shape)}")
    return torch.flip(x, dims=[-1])


def split(x: torch.Tensor, n_train: int, n_test: int | None = None, seed: int = 0):
    """A seeded random split of ``x`` into ``(train, test)`` with ``n_train`` and ``n_test`` rows.

    ``n_test`` defaults to all remaining rows. The two parts never share a row.
    """
    n_train = check_positive_int(n_train, "n_train")
    rest = x.shape[0] - n_train
    if rest < 0:
        raise ValueError(f"n_train must be at most {x.shape[0]} (the number of rows), got {n_train}")
    n_test = rest if n_test is None else check_positive_int(n_test, "n_test", allow_zero=True)
    if n_test > rest:
        raise ValueError(f"n_test must be at most {rest} (the rows left after n_train), got {n_test}")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[perm[:n_train]], x[perm[n_train:n_train + n_test]]


def _finish(images: np.ndarray, labels: np.ndarray, flip: bool, dtype, return_labels: bool):
    x = torch.as_tensor(images, dtype=dtype)
    y = torch.as_tensor(labels, dtype=torch.long)
    if flip:
        x = torch.cat([x, horizontal_flip(x)])
        y = torch.cat([y, y])
    return (x, y) if return_labels else x


def digits(
    n: int | None = None,
    classes=None,
    seed: int = 0,
    flip: bool = False,
    dtype=torch.float32,
    return_labels: bool = False,
):
    """scikit-learn's 1,797 handwritten digits as images in [-1, 1], shape ``(n, 1, 8, 8)``.

    Parameters
    ----------
    n : int, optional
        Number of images: a seeded random subset (in the data set's order); all when omitted.
    classes : iterable of int, optional
        Keep only these digit classes (0-9) before subsetting.
    seed : int
        Seed of the subset choice.
    flip : bool
        Append the horizontal flips of the chosen images (``2 n`` images; flips come after
        the originals, in the same order), as seed 000 does for its training sets.
    dtype : torch dtype
    return_labels : bool
        Also return the class labels, a long tensor (one per returned image: ``2 n`` with flips).

    The 17 grey levels 0..16 map linearly to [-1, 1] (``x / 8 - 1``).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float64) / 8.0 - 1.0
    labels = bunch.target
    keep = _select_classes(labels, classes, 10)
    pick = keep[_subset(len(keep), n, seed)]
    return _finish(images[pick][:, None], labels[pick], flip, dtype, return_labels)


def cifar10(
    root,
    n: int | None = None,
    train: bool = True,
    classes=None,
    seed: int = 0,
    flip: bool = False,
    dtype=torch.float32,
    return_labels: bool = False,
):
    """CIFAR-10 from a local copy, as images in [-1, 1] of shape ``(n, 3, 32, 32)``.

    Reads the "python version" of the data set (the folder ``cifar-10-batches-py`` holding the
    pickled ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, the format torchvision's
    ``CIFAR10`` also reads). ``root`` is that folder or its parent. Nothing is downloaded.

    Parameters are as in :func:`digits`; ``train`` picks the 50,000 training images or the
    10,000 test images.
    """
    if root is None:
        raise ValueError("root must name a local CIFAR-10 copy (the chapters' data_root parameter when dataset='cifar10')")
    root = Path(root).expanduser()
    folder = root if (root / "test_batch").exists() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: missing {', '.join(missing)}. Download the python "
            "version (cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html on a "
            "machine with network access, unpack it, and pass the folder as data_root."
        )
    data, labels = [], []
    for name in names:
        with open(folder / name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    data, labels = np.concatenate(data), np.concatenate(labels)
    keep = _select_classes(labels, classes, 10)
    pick = keep[_subset(len(keep), n, seed)]
    images = data[pick].astype(np.float64) / 127.5 - 1.0
    return _finish(images, labels[pick], flip, dtype, return_labels)


def load(name: str, n: int | None = None, data_root=None, **kwargs):
    """Load a data set by name: ``"digits"``, ``"cifar10"`` (which needs ``data_root``),
    ``"von_mises_mixture"`` (generated; needs ``n``), ``"digits_with_rare_class"`` or
    ``"cifar10_with_rare_class"`` (needs ``data_root``).

    This is the switch chapters use for their ``dataset`` parameter and recipes for their data;
    keyword arguments go to :func:`digits`, :func:`cifar10` or :func:`von_mises_mixture`.
    """
    if name == "digits":
        return digits(n=n, **kwargs)
    if name == "cifar10":
        return cifar10(data_root, n=n, **kwargs)
    if name == "von_mises_mixture":
        return von_mises_mixture(n, **kwargs)
    if name == "digits_with_rare_class":
        return digits_with_rare_class(**kwargs)
    if name == "cifar10_with_rare_class":
        return cifar10_with_rare_class(data_root, **kwargs)
    raise ValueError(f"dataset must be one of {', '.join(map(repr, LOADERS))}, got {name!r}")


def random_points(n: int, dim: int = 2, radius: float = 1.0, min_separation: float = 0.0, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``n`` seeded points drawn uniformly in the ball of ``radius`` in ``R^dim``.

    With ``min_separation > 0`` draws are rejected until every pair is at least that far apart
    (useful for toy training sets whose points should be distinguishable in a figure).
    """
    n = check_positive_int(n, "n")
    dim = check_positive_int(dim, "dim")
    radius = check_positive(radius, "radius")
    if min_separation < 0:
        raise ValueError(f"min_separation must be >= 0, got {min_separation}")
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    for _ in range(10_000 * n):
        if len(points) == n:
            break
        p = rng.normal(size=dim)
        p *= radius * rng.uniform() ** (1.0 / dim) / np.linalg.norm(p)
        if all(np.linalg.norm(p - q) >= min_separation for q in points):
            points.append(p)
    if len(points) < n:
        raise ValueError(f"could not place {n} points at min_separation={min_separation} in a ball of radius {radius}")
    return torch.as_tensor(np.stack(points), dtype=dtype)


def subspace_gaussian(n: int, dim: int, k: int, scale: float = 1.0, seed: int = 0, dtype=torch.float64):
    """Samples of a Gaussian supported on a random ``k``-dimensional linear subspace of ``R^dim``.

    Returns ``(x, basis)``: ``x`` of shape ``(n, dim)`` and an orthonormal ``basis`` of shape
    ``(dim, k)``; the covariance is ``scale^2 basis basis^T`` (rank ``k``), the mean zero. The
    local intrinsic dimension is ``k`` everywhere on the support (seed 004, Section 2).
    """
    n = check_positive_int(n, "n")
    dim = check_positive_int(dim, "dim")
    k = check_positive_int(k, "k", allow_zero=True)
    if k > dim:
        raise ValueError(f"k must be at most dim = {dim}, got {k}")
    scale = check_positive(scale, "scale")
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, max(k, 1), generator=g, dtype=torch.float64))
    basis = basis[:, :k]
    x = scale * torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.T
    return x.to(dtype), basis.to(dtype)


def von_mises_mixture(n: int, kappa: float = 2.0, mu: float = 0.0, origin_weight: float = 0.2, radius: float = 1.0,
                      isolated: float | None = None, seed: int = 0, dtype=torch.float32, return_labels: bool = False):
    """Samples of seed 004's Fig. 4 distribution in ``R^2``: a von Mises law on a circle plus a point mass.

    With probability ``origin_weight`` a point is the origin (a point mass: ``LID_* = 0``); otherwise
    it is ``radius (cos theta, sin theta)`` with ``theta ~ VonMises(mu, kappa)`` (``LID_* = 1``).

    Parameters
    ----------
    n : int, number of points
    kappa, mu : concentration and mean angle of the von Mises law
    origin_weight : float in [0, 1)
    isolated : float, optional
        Replace the last circle point by one at this angle. Seed 004's isolated training point arose
        by chance ("a single point x0 sits isolated in a low-density region"); placing it at the
        least likely angle (``mu + pi``) reproduces that situation deterministically.
    seed : int
    return_labels : bool
        Also return ``LID_*`` of each point (0 at the origin, 1 on the circle), a long tensor.
    """
    n = check_positive_int(n, "n")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa < float("inf"):
        raise ValueError(f"kappa must be a finite number >= 0 (0: uniform on the circle), got {kappa!r}")
    radius = check_positive(radius, "radius")
    if not 0 <= origin_weight < 1:
        raise ValueError(f"origin_weight must lie in [0, 1), got {origin_weight!r}")
    rng = np.random.default_rng(seed)
    at_origin = rng.uniform(size=n) < origin_weight
    theta = rng.vonmises(mu, kappa, size=n)
    if isolated is not None:
        on_circle = np.flatnonzero(~at_origin)
        if len(on_circle) == 0:
            raise ValueError("isolated needs at least one point on the circle")
        theta[on_circle[-1]] = isolated
    x = radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    x[at_origin] = 0.0
    x = torch.as_tensor(x, dtype=dtype)
    labels = torch.as_tensor((~at_origin).astype(np.int64))
    return (x, labels) if return_labels else x


def with_rare_class(source: str = "digits", rare: int = 3, n_rare: int = 5, n_per_class: int = 100, seed: int = 0,
                    data_root=None, dtype=torch.float32, return_labels: bool = False):
    """A data set with one rare class: ``n_per_class`` images of every class but ``rare``, which has ``n_rare``.

    The training set of chapter 12's class-conditional model: conditioning on the rare class leaves
    the model a handful of images to learn from (seed 004, Section 3: specific conditions drive
    memorization). ``source`` is ``"digits"`` or ``"cifar10"`` (read from ``data_root``); images are
    chosen with ``seed``; the classes appear in order 0..9.
    """
    n_rare = check_positive_int(n_rare, "n_rare")
    n_per_class = check_positive_int(n_per_class, "n_per_class")
    if rare not in range(10):
        raise ValueError(f"rare must be a class 0..9, got {rare!r}")
    if source not in ("digits", "cifar10"):
        raise ValueError(f"source must be 'digits' or 'cifar10', got {source!r}")
    images, labels = load(source, data_root=data_root, dtype=dtype, return_labels=True)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(labels.numpy() == c)
        m = n_rare if c == rare else n_per_class
        if m > len(idx):
            raise ValueError(f"class {c} has only {len(idx)} images, fewer than the {m} asked for")
        keep.append(np.sort(rng.choice(idx, size=m, replace=False)))
    keep = torch.as_tensor(np.concatenate(keep))
    return (images[keep], labels[keep]) if return_labels else images[keep]


def digits_with_rare_class(rare: int = 3, n_rare: int = 5, n_per_class: int = 100, seed: int = 0,
                           dtype=torch.float32, return_labels: bool = False):
    """:func:`with_rare_class` of the digits (chapter 12's training set)."""
    return with_rare_class("digits", rare, n_rare, n_per_class, seed, dtype=dtype, return_labels=return_labels)


def cifar10_with_rare_class(data_root=None, rare: int = 3, n_rare: int = 5, n_per_class: int = 1000, seed: int = 0,
                            dtype=torch.float32, return_labels: bool = False):
    """:func:`with_rare_class` of CIFAR-10's training images (class 3 is "cat")."""
    return with_rare_class("cifar10", rare, n_rare, n_per_class, seed, data_root, dtype, return_labels)


# --- the data of a trained model ------------------------------------------------------------------


@dataclass(frozen=True)
class Duplication:
    """``n`` images of a data set, chosen with ``seed``, that appear ``times`` times in training.

    Duplication drives memorization (Carlini et al. 2023; Somepalli et al. 2023; seed 004,
    Prop. 3.1); duplicating a known subset gives a part of the memorized set known in advance.
    """

    n: int
    times: int
    seed: int


@dataclass(frozen=True)
class DataRecipe:
    """The training data of a model: a data set of :func:`load`, its options, and duplicates.

    Attributes
    ----------
    name : str, a data set :func:`load` knows (``"digits"``, ``"von_mises_mixture"``, ...)
    options : dict, keyword arguments of that loader (``n``, ``seed``, ``flip``, ``rare``, ...)
    duplicate : Duplication or None
    """

    name: str
    options: dict = field(default_factory=dict)
    duplicate: Duplication | None = None

    def __post_init__(self):
        if self.name not in LOADERS:
            raise ValueError(f"name must be one of {', '.join(map(repr, LOADERS))}, got {self.name!r}")
        if self.duplicate is not None and "n" not in self.options:
            raise ValueError("a recipe that duplicates images needs options['n'] (the number of distinct images)")

    def __getattr__(self, key):
        """Options read as attributes: ``recipe.data.rare``, ``recipe.data.n``."""
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(f"{type(self).__name__} has no attribute or option {key!r}")

    def to_dict(self) -> dict:
        """The flat form stored in ``data/manifest.json``: name, options, then the duplication."""
        out = {"name": self.name, **self.options}
        if self.duplicate is not None:
            out["duplicate"] = dict(n=self.duplicate.n, times=self.duplicate.times, seed=self.duplicate.seed)
        return out


def _distinct(spec: DataRecipe, dtype=torch.float32, return_labels: bool = False, data_root=None):
    """The recipe's data set before any duplication (with its flips, when the recipe flips)."""
    return load(spec.name, data_root=data_root, dtype=dtype, return_labels=return_labels, **spec.options)


def duplicated_indices(spec: DataRecipe) -> torch.Tensor:
    """Indices (into the distinct images) of the images a recipe duplicates; empty when none."""
    if spec.duplicate is None:
        return torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(spec.duplicate.seed)
    return torch.randperm(spec.options["n"], generator=g)[: spec.duplicate.n].sort().values


def training_set(spec: DataRecipe, dtype=torch.float32, distinct: bool = False, data_root=None) -> torch.Tensor:
    """The training set of a recipe, exactly as the model saw it.

    With a :class:`Duplication` ``{n, times, seed}``, ``n`` images chosen with ``seed`` appear
    ``times`` times in all, the extra copies appended after the distinct images. ``distinct=True``
    returns the distinct images only (what memorization is measured against);
    :func:`duplicated_indices` says which of them were duplicated. ``data_root`` is the local
    CIFAR-10 copy of a CIFAR-10 recipe (ignored by the embedded and generated data sets).
    """
    images = _distinct(spec, dtype, data_root=data_root)
    if spec.duplicate is None or distinct:
        return images
    extra = images[duplicated_indices(spec)].repeat(spec.duplicate.times - 1, *([1] * (images.ndim - 1)))
    return torch.cat([images, extra])


def training_labels(spec: DataRecipe, data_root=None) -> torch.Tensor:
    """Class labels of the recipe's distinct training images (same order as :func:`training_set`)."""
    return _distinct(spec, return_labels=True, data_root=data_root)[1]


def held_out(spec: DataRecipe, n: int | None = None, seed: int = 0, dtype=torch.float32,
             return_labels: bool = False, data_root=None):
    """Images of the recipe's data set that the model never saw, prepared like its training set.

    Draws ``n`` (all when None) of the data set's images that are not among the training images,
    with ``seed``; when the recipe flips its training images, the flips of the held-out images are
    appended too, so both sets have the same mix of originals and mirror images. With
    ``return_labels`` also their class labels. An image counts as seen when its pixels equal a
    training image's exactly (rows compared by their bytes, so CIFAR-10's 50,000 cost no more
    than a pass over them).
    """
    source_name = "cifar10" if spec.name == "cifar10_with_rare_class" else spec.name
    source_name = "digits" if source_name == "digits_with_rare_class" else source_name
    source, source_labels = load(source_name, data_root=data_root, dtype=dtype, return_labels=True)
    train = training_set(spec, dtype=dtype, distinct=True, data_root=data_root)
    flip = spec.options.get("flip", False)
    if flip:
        train = train[: len(train) // 2]
    known = {row.tobytes() for row in train.flatten(1).numpy()}
    seen = torch.tensor([row.tobytes() in known for row in source.flatten(1).numpy()], dtype=torch.bool)
    pool = source[~seen]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        if not 1 <= n <= len(pool):
            raise ValueError(f"n must lie in 1..{len(pool)} (the images the model never saw), got {n}")
        order = order[:n]
    images, labels = pool[order], source_labels[~seen][order]
    if flip:
        images, labels = torch.cat([images, horizontal_flip(images)]), torch.cat([labels, labels])
    return (images, labels) if return_labels else images
