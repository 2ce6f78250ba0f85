"""Replication by retrieval: do generations copy training images? (Somepalli et al., seed 003).

A generation *replicates* a training image when it contains an object that appears identically in
it, up to the small variations data augmentation makes (seed 003, p. 3). The detector is image
retrieval: embed every image with a feature extractor, find each generation's most similar
training image, and compare that top-1 similarity with what training images score against each
other (train-to-train, self excluded) and what never-seen images score against the training set
(held-out-to-train).

* Similarities between feature sets: :func:`cosine` (global inner product of normalised
  features) and :func:`split_product` (p. 4: normalise each whole feature vector once, cut it into
  position-aligned chunks, keep the largest chunk inner product, as the released code does);
  :func:`similarity_matrix`, :func:`topk` and :func:`top1` run either one in memory-bounded
  chunks on any device.
* Feature extractors, one interface ``extractor(images) -> features (n, n_chunks, dim)``:
  :func:`pixel_extractor` (mean-centred pixels, chunks = patches), :func:`copy_detector` (a small
  CNN trained here on digits by instance discrimination with copy-style augmentations, the role
  SSCD plays in the paper), :func:`random_conv` (the same network untrained, a control) and
  :func:`load_extractor` (a TorchScript file or a state dict the user names, e.g. SSCD or DINO,
  whose weights cannot be downloaded here; :func:`imagenet_preprocess` feeds them). All of them
  take 8x8 digits and 3x32x32 CIFAR-10 images alike (chapter 8's ``dataset="cifar10"``).
* Replication rates: :func:`calibrate_threshold` (the threshold that flags a stated fraction of
  held-out images), :func:`replication_rate` with a Wilson interval, beside the paper's fixed
  :data:`PAPER_THRESHOLD`; :func:`trend_test` (Cochran-Armitage) and :func:`overlap` (KS statistic
  and overlap coefficient of two score distributions).
* A benchmark of known replicas: :func:`augment`, :func:`replica_benchmark` (augmented copies,
  collages of two digits, pasted patches), :func:`recall_at_k`, :func:`mean_average_precision`.

The copy detector's weights are committed as ``data/digits_copy_detector.pt`` with its sha256, recipe
and training time in ``data/manifest.json``; ``python -m mempkg.retrieval train``
re-creates both.

References: Somepalli et al. (2023), "Diffusion Art or Digital Forgery?", pp. 3-4, 6, 9;
Pizzi et al. (2022) for SSCD; Chen et al. (2020) for InfoNCE with two augmented views.
"""
from __future__ import annotations

import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ._checks import check_choice, check_positive, check_positive_int

__all__ = ["PAPER_THRESHOLD", "COPY_DETECTOR", "cosine", "split_product", "similarity_matrix", "topk", "top1",
           "Extractor", "CopyDetectorNet", "pixel_extractor", "random_conv", "copy_detector", "train_copy_detector",
           "save_copy_detector", "copy_detector_entry", "load_extractor", "imagenet_preprocess", "augment", "Replicas", "replica_benchmark", "recall_at_k",
           "mean_average_precision", "triangle_bound", "calibrate_threshold", "Rate", "replication_rate",
           "wilson_interval", "trend_test", "overlap", "never_seen", "evaluate_retrieval", "Replication",
           "replication_report"]

#: The replication threshold of the released code (top-1 SSCD cosine > 0.5). It belongs to SSCD's
#: global cosine; split-product scores live on a ~1/n_chunks scale and other extractors elsewhere.
PAPER_THRESHOLD = 0.5

#: Name of the committed copy detector (``data/NAME.pt`` and its manifest entry).
COPY_DETECTOR = "digits_copy_detector"

SIMILARITIES = ("cosine", "split_product")


# --- similarities ---------------------------------------------------------------------------------


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of features (n, ...), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, n_chunks, dim) or (n, dim), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one row")
    return x.reshape(x.shape[0], -1)


def _pair(a, b):
    fa, fb = _flat(a, "a"), _flat(b, "b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"a and b must have the same feature size, got {fa.shape[1]} and {fb.shape[1]} "
                         f"(shapes {tuple(a.shape)} and {tuple(b.shape)})")
    return fa, fb.to(device=fa.device, dtype=fa.dtype)


def _n_chunks(a: torch.Tensor, n_chunks) -> int:
    if n_chunks is None:
        if a.ndim != 3:
            raise ValueError(f"n_chunks must be given for features of shape {tuple(a.shape)} (only (n, n_chunks, dim) "
                             f"features carry their own)")
        return a.shape[1]
    return check_positive_int(n_chunks, "n_chunks")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (global inner product).

    Each row is flattened (all chunks together) and normalised to unit length, as the released code
    does with ``dotproduct`` (seed 003, p. 4: "inner product metrics measure global similarity").

    Parameters
    ----------
    a : tensor ``(n, n_chunks, dim)`` or ``(n, D)``
    b : tensor ``(m, n_chunks, dim)`` or ``(m, D)``, the same flattened size ``D``

    Returns
    -------
    tensor ``(n, m)`` in [-1, 1]. One matrix product; for large sets use :func:`similarity_matrix`,
    which processes rows of ``a`` in chunks.
    """
    fa, fb = _pair(a, b)
    return F.normalize(fa, dim=1) @ F.normalize(fb, dim=1).T


def split_product(a: torch.Tensor, b: torch.Tensor, n_chunks: int | None = None, normalize: str = "global") -> torch.Tensor:
    """Split-product similarity (seed 003, p. 4): the largest inner product of aligned chunks.

    ``normalize="global"`` (the released code): each whole feature vector is normalised once, then cut
    into ``n_chunks`` position-aligned chunks ``a_c``, ``b_c`` and the score is ``max_c <a_c, b_c>``.
    The chunk products sum to the global cosine, so when the energy is spread evenly each is about
    ``cosine / n_chunks``: the scale is ~1/n_chunks, and the paper's 0.5 threshold does not apply.
    ``normalize="chunk"`` normalises every chunk instead (scores in [-1, 1], the largest chunk cosine).

    Parameters
    ----------
    a : tensor ``(n, n_chunks, dim)`` or ``(n, D)``
    b : tensor ``(m, n_chunks, dim)`` or ``(m, D)``
    n_chunks : int dividing the flattened feature size ``D``; by default ``a.shape[1]`` of 3-D
        features (one chunk per token or spatial position, as for ViT tokens in the paper)
    normalize : ``"global"`` or ``"chunk"``

    Returns
    -------
    tensor ``(n, m)``. Memory ``n * m`` (plus one chunk's product at a time).
    """
    check_choice(normalize, "normalize", ("global", "chunk"))
    fa, fb = _pair(a, b)
    c = _n_chunks(a, n_chunks)
    if fa.shape[1] % c:
        raise ValueError(f"n_chunks must divide the feature size {fa.shape[1]}, got {c}")
    ca, cb = fa.reshape(len(fa), c, -1), fb.reshape(len(fb), c, -1)
    if normalize == "global":
        ca = F.normalize(fa, dim=1).reshape_as(ca)
        cb = F.normalize(fb, dim=1).reshape_as(cb)
    else:
        ca, cb = F.normalize(ca, dim=2), F.normalize(cb, dim=2)
    out = ca[:, 0] @ cb[:, 0].T
    for k in range(1, c):
        out = torch.maximum(out, ca[:, k] @ cb[:, k].T)
    return out


def _similarity(similarity, n_chunks, normalize):
    if callable(similarity):
        return similarity
    check_choice(similarity, "similarity", SIMILARITIES)
    if similarity == "cosine":
        return cosine
    return lambda a, b: split_product(a, b, n_chunks, normalize)


def similarity_matrix(query: torch.Tensor, train: torch.Tensor, similarity="cosine", n_chunks: int | None = None,
                      normalize: str = "global", chunk_size: int = 1024, progress: bool = False) -> torch.Tensor:
    """The full ``(n, m)`` similarity matrix, computed ``chunk_size`` query rows at a time.

    Parameters
    ----------
    query : tensor ``(n, n_chunks, dim)``; train : tensor ``(m, n_chunks, dim)``
    similarity : ``"cosine"``, ``"split_product"`` or a callable ``f(a, b) -> (len(a), len(b))``
    n_chunks, normalize : for ``"split_product"`` (see :func:`split_product`)
    chunk_size : query rows per block (memory ``chunk_size * m``)

    Returns
    -------
    tensor ``(n, m)`` on ``query``'s device.
    """
    _pair(query, train)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    sim = _similarity(similarity, n_chunks, normalize)
    train = train.to(query.device)
    blocks = range(0, len(query), chunk_size)
    return torch.cat([sim(query[s:s + chunk_size], train) for s in tqdm(blocks, disable=not progress, desc="similarity")])


def topk(query: torch.Tensor, train: torch.Tensor, k: int = 1, similarity="cosine", n_chunks: int | None = None,
         normalize: str = "global", exclude_self: bool = False, chunk_size: int = 1024, progress: bool = False):
    """The ``k`` most similar training rows of every query row (largest similarity first).

    Memory ``chunk_size * m``: 5,000 queries against 1,797 training images never hold more than one
    block of the matrix. ``exclude_self=True`` (query is the training set itself) skips each row's
    similarity with itself: the train-to-train baseline of the paper's histograms.

    Returns
    -------
    values : tensor ``(n, k)``; indices : long tensor ``(n, k)`` into ``train``
    """
    fq, ft = _pair(query, train)
    k = check_positive_int(k, "k")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if exclude_self and len(fq) != len(ft):
        raise ValueError("exclude_self=True needs query to be the training set itself (same length)")
    if k > len(ft) - int(exclude_self):
        raise ValueError(f"k must be at most {len(ft) - int(exclude_self)} (the number of candidates), got {k}")
    sim = _similarity(similarity, n_chunks, normalize)
    train = train.to(query.device)
    values, indices = [], []
    for s in tqdm(range(0, len(query), chunk_size), disable=not progress, desc="retrieval"):
        block = sim(query[s:s + chunk_size], train)
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + s] = -math.inf
        v, i = block.topk(k, dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def top1(query_feats: torch.Tensor, train_feats: torch.Tensor, similarity="cosine", exclude_self: bool = False,
         n_chunks: int | None = None, normalize: str = "global", chunk_size: int = 1024, progress: bool = False):
    """Top-1 similarity of each query to the training set and the index of its match (seed 003, p. 6).

    Parameters
    ----------
    query_feats : tensor ``(n, n_chunks, dim)``, e.g. features of generations
    train_feats : tensor ``(m, n_chunks, dim)``
    similarity : ``"cosine"``, ``"split_product"`` or a callable
    exclude_self : bool, True when ``query_feats`` is ``train_feats`` (train-to-train, self excluded,
        as the released code's top-2)
    n_chunks, normalize, chunk_size, progress : see :func:`split_product` and :func:`topk`

    Returns
    -------
    values : tensor ``(n,)``; indices : long tensor ``(n,)``
    """
    v, i = topk(query_feats, train_feats, 1, similarity, n_chunks, normalize, exclude_self, chunk_size, progress)
    return v[:, 0], i[:, 0]


def triangle_bound(cos_ca: float, cos_cb: float) -> float:
    """Smallest cosine two unit vectors A, B can have when C is at cosines ``cos_ca``, ``cos_cb`` to them.

    Seed 003, p. 4: a global inner product obeys the triangle inequality. With the chordal distance
    ``d = sqrt(2 - 2 cos)`` on the unit sphere, ``d(A, B) <= d(C, A) + d(C, B)``, hence
    ``cos(A, B) >= 1 - (d(C, A) + d(C, B))**2 / 2``: a collage C close to both sources forces the two
    unrelated sources to look alike. Returns that lower bound (it may be below -1, i.e. vacuous).
    """
    for value, name in ((cos_ca, "cos_ca"), (cos_cb, "cos_cb")):
        if not -1.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [-1, 1], got {value!r}")
    d = math.sqrt(max(2 - 2 * float(cos_ca), 0.0)) + math.sqrt(max(2 - 2 * float(cos_cb), 0.0))
    return 1 - d * d / 2


# --- feature extractors ---------------------------------------------------------------------------


def _as_chunks(out: torch.Tensor) -> torch.Tensor:
    """Network output as ``(n, n_chunks, dim)``: a vector is one chunk, a feature map one chunk per position."""
    if out.ndim == 2:
        return out[:, None, :]
    if out.ndim == 3:
        return out
    if out.ndim == 4:
        return out.flatten(2).transpose(1, 2)
    raise ValueError(f"an extractor must return (n, D), (n, tokens, dim) or (n, C, H, W) features, got {tuple(out.shape)}")


class Extractor:
    """A feature extractor with the book's interface: ``extractor(images) -> (n, n_chunks, dim)``.

    Wraps a callable (an ``nn.Module`` or a function) whose output is a vector ``(n, D)``, tokens
    ``(n, T, dim)`` or a feature map ``(n, C, H, W)`` (one chunk per position); runs it without
    gradients, in eval mode, ``batch_size`` images at a time, on the images' device.

    Parameters
    ----------
    module : callable ``images -> features``
    name : str, for tables and plots
    preprocess : callable, optional, applied to each batch first (resizing, colour channels,
        the normalisation a pretrained model expects)
    batch_size : int
    """

    def __init__(self, module, name: str, preprocess=None, batch_size: int = 512):
        if not callable(module):
            raise ValueError(f"module must be callable, got {type(module).__name__}")
        self.module, self.name, self.preprocess = module, name, preprocess
        self.batch_size = check_positive_int(batch_size, "batch_size")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty tensor (n, C, H, W), got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if isinstance(self.module, nn.Module):
            self.module.eval()
        outs = []
        for s in range(0, len(images), self.batch_size):
            x = images[s:s + self.batch_size]
            if self.preprocess is not None:
                x = self.preprocess(x)
            outs.append(_as_chunks(self.module(x)).float())
        return torch.cat(outs)

    def to(self, device):
        if isinstance(self.module, nn.Module):
            self.module.to(device)
        return self

    def __repr__(self):
        return f"Extractor({self.name!r})"


class _Pixels(nn.Module):
    def __init__(self, center: torch.Tensor, patch: int):
        super().__init__()
        self.register_buffer("center", center)
        self.patch = patch

    def forward(self, x):
        if x.shape[1:] != self.center.shape:
            raise ValueError(f"images must have shape (n, {', '.join(map(str, self.center.shape))}), got {tuple(x.shape)} "
                             f"(pass center= the mean of images of that shape, or a batch of them)")
        x = x - self.center.to(x)
        p = self.patch
        n, c, h, w = x.shape
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), -1)
        return F.normalize(patches.flatten(1), dim=1).reshape_as(patches)


def pixel_extractor(center: torch.Tensor | None = None, patch: int = 4) -> Extractor:
    """Pixels as features: mean-centred, unit-normalised, chunks = non-overlapping ``patch x patch`` patches.

    Cosine on raw [-1, 1] digits is dominated by the constant -1 background (every pair scores high);
    subtracting a fixed centre image removes it. An 8x8 digit with ``patch=4`` gives 4 chunks of 16;
    a 3x32x32 CIFAR-10 image with ``patch=16`` gives its 4 quadrants, chunks of 768.

    Parameters
    ----------
    center : tensor ``(C, H, W)``, the image subtracted, or a batch ``(n, C, H, W)`` whose mean is
        subtracted (e.g. the data set's images); default the mean of all 1,797 digits (1x8x8)
    patch : int dividing H and W

    Returns
    -------
    :class:`Extractor`, ``images (n, C, H, W) -> (n, (H/patch)(W/patch), C patch^2)``.
    """
    patch = check_positive_int(patch, "patch")
    if center is None:
        from .data import digits

        center = digits(dtype=torch.float32).mean(0)
    if isinstance(center, torch.Tensor) and center.ndim == 4:
        center = center.float().mean(0)
    if not isinstance(center, torch.Tensor) or center.ndim != 3:
        raise ValueError(f"center must be an image (C, H, W) or a batch (n, C, H, W), got "
                         f"{tuple(center.shape) if isinstance(center, torch.Tensor) else type(center).__name__}")
    if center.ndim != 3 or center.shape[1] % patch or center.shape[2] % patch:
        raise ValueError(f"patch must divide the image height and width {tuple(center.shape[1:])}, got {patch}")
    return Extractor(_Pixels(center.detach().float().cpu(), patch), "pixels")


class CopyDetectorNet(nn.Module):
    """A small CNN whose 4x4 feature map gives 16 local chunks (receptive field 4x4 pixels each on 8x8).

    ``forward(x)`` returns features ``(n, 16, width)`` for 8x8 images: 3x3 conv, 2x2 conv of stride
    2, 1x1 conv. Larger images get one more stage (3x3 conv, 2x2 conv of stride 2) per halving until
    the map is 4x4 or smaller (32x32 CIFAR-10: two more stages, still 16 chunks, each seeing about a
    16x16 window); the 8x8 network is unchanged. ``project(x)`` adds the projection head used only
    for training (InfoNCE), as in SimCLR/SSCD, where retrieval uses the representation before the
    head.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, proj_dim: int = 64, image_size: int = 8):
        super().__init__()
        check_positive_int(width, "width")
        if image_size % 2:
            raise ValueError(f"image_size must be even, got {image_size}")
        self.config = dict(in_channels=in_channels, width=width, proj_dim=proj_dim, image_size=image_size)
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 2, stride=2), nn.ReLU()]
        side = image_size // 2
        while side > 4 and side % 2 == 0:
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 2, stride=2), nn.ReLU()]
            side //= 2
        self.body = nn.Sequential(*layers, nn.Conv2d(width, width, 1))
        positions = side ** 2
        self.head = nn.Sequential(nn.Linear(width * positions, 128), nn.ReLU(), nn.Linear(128, proj_dim))

    def forward(self, x):
        return self.body(x).flatten(2).transpose(1, 2)

    def project(self, x):
        return self.head(self.forward(x).flatten(1))


def random_conv(seed: int = 0, width: int = 32, in_channels: int = 1, image_size: int = 8) -> Extractor:
    """The copy detector's network with its random initialisation (seeded), untrained: a control.

    Random convolutional features already carry local image statistics; what training adds is
    invariance to the copy-style augmentations. ``in_channels`` and ``image_size`` as in
    :class:`CopyDetectorNet` (3 and 32 for CIFAR-10). Returns an :class:`Extractor` ``(n, 16, width)``.
    """
    torch.manual_seed(check_positive_int(seed, "seed", allow_zero=True))
    return Extractor(CopyDetectorNet(in_channels=in_channels, width=width, image_size=image_size), "random_conv")


def augment(images: torch.Tensor, generator: torch.Generator | None = None, max_shift: float | None = None,
            max_rotation: float = 10.0, noise: float = 0.1, blur_prob: float = 0.2, cutout: int | None = None,
            cutout_prob: float = 0.5, background: float = -1.0) -> torch.Tensor:
    """Copy-style augmentations of images in [-1, 1] (the variations a replica may carry; seed 003, p. 3).

    Per image, independently: a rotation in ``[-max_rotation, max_rotation]`` degrees and a shift
    drawn uniformly in ``[-max_shift, max_shift]`` pixels per axis (bilinear, background outside; on
    8x8 digits a whole-pixel shift moves an eighth of the image and defeats every aligned
    similarity, so the default is half a pixel), a 3x3 binomial blur with probability
    ``blur_prob``, a ``cutout x cutout`` square set to the background with probability
    ``cutout_prob``, Gaussian noise of standard deviation ``noise``; clamped to [-1, 1].

    ``max_shift`` and ``cutout`` default to the same share of the image at any size: half a pixel
    and 2 pixels per 8 pixels of the shorter side (0.5 and 2 on 8x8 digits, 2 and 8 on 32x32
    CIFAR-10). ``background`` (-1, black) fills what rotations uncover and the cutout square.

    Parameters
    ----------
    images : tensor ``(n, C, H, W)``
    generator : torch.Generator on the CPU, seeds every draw (results are identical on any device)

    Returns
    -------
    tensor ``(n, C, H, W)`` on ``images``' device.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty tensor (n, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    n, c, h, w = images.shape
    if max_shift is None:
        max_shift = 0.5 * min(h, w) / 8
    if cutout is None:
        cutout = max(1, round(2 * min(h, w) / 8))
    check_positive_int(cutout, "cutout", allow_zero=True)
    if cutout > min(h, w):
        raise ValueError(f"cutout must be at most {min(h, w)}, got {cutout}")
    for value, name in ((blur_prob, "blur_prob"), (cutout_prob, "cutout_prob")):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    for value, name in ((noise, "noise"), (max_rotation, "max_rotation"), (max_shift, "max_shift")):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    dev, dt = images.device, images.dtype
    g = generator
    angle = (torch.rand(n, generator=g) * 2 - 1) * max_rotation * math.pi / 180
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift
    blur = torch.rand(n, generator=g) < blur_prob
    cut = torch.rand(n, generator=g) < cutout_prob
    cut_at = torch.stack([torch.randint(0, h - cutout + 1, (n,), generator=g),
                          torch.randint(0, w - cutout + 1, (n,), generator=g)], 1)
    eps = torch.randn(images.shape, generator=g) * noise
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = angle.cos(), -angle.sin(), -2 * shift[:, 1] / w
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = angle.sin(), angle.cos(), -2 * shift[:, 0] / h
    grid = F.affine_grid(theta.to(dev, dt), list(images.shape), align_corners=False)
    out = F.grid_sample(images - background, grid, padding_mode="zeros", align_corners=False) + background
    k1 = torch.tensor([1.0, 2.0, 1.0], device=dev, dtype=dt)
    kernel = (k1[:, None] * k1[None, :] / 16).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    out = torch.where(blur.to(dev)[:, None, None, None], blurred, out)
    if cutout:
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        r0, c0 = cut_at[:, 0, None, None], cut_at[:, 1, None, None]
        square = (rows >= r0) & (rows < r0 + cutout) & (cols >= c0) & (cols < c0 + cutout) & cut[:, None, None]
        out = out.masked_fill(square[:, None].to(dev), background)
    return (out + eps.to(dev, dt)).clamp(-1, 1)


def train_copy_detector(images: torch.Tensor, n_steps: int = 1500, batch_size: int = 256, lr: float = 2e-3,
                        temperature: float = 0.1, width: int = 32, seed: int = 0, progress: bool = True) -> CopyDetectorNet:
    """Train :class:`CopyDetectorNet` by instance discrimination (InfoNCE) with copy-style augmentations.

    Every step draws ``batch_size`` distinct images, two :func:`augment` views of each, and minimises
    the NT-Xent loss: each view must pick its partner among the ``2 batch_size - 1`` others at
    temperature ``temperature``. This is SSCD's recipe (Pizzi et al. 2022) in miniature, without its
    entropy regulariser and mixup; SSCD never saw the images it is evaluated on, this detector is
    trained on the digits themselves (chapter 8 says what that changes).

    Parameters
    ----------
    images : tensor ``(n, C, H, W)``, n >= batch_size (8x8 digits, 3x32x32 CIFAR-10, ...); the
        network trains on their device
    n_steps, batch_size, lr, temperature : the optimisation (Adam)
    width : channels of the feature map (the chunk dimension)
    seed : seeds the initialisation and every draw

    Returns
    -------
    the trained network (eval mode), with ``.history`` the loss per step.
    """
    n_steps, batch_size = check_positive_int(n_steps, "n_steps"), check_positive_int(batch_size, "batch_size")
    check_positive(lr, "lr")
    check_positive(temperature, "temperature")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) < batch_size:
        raise ValueError(f"images must be a tensor (n, C, H, W) with n >= batch_size = {batch_size}, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    torch.manual_seed(seed)
    net = CopyDetectorNet(in_channels=images.shape[1], width=width, image_size=images.shape[-1]).to(images.device)
    g = torch.Generator().manual_seed(seed)  # on the CPU: the draws are the same on every device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    targets = torch.cat([torch.arange(batch_size) + batch_size, torch.arange(batch_size)]).to(images.device)
    history = []
    net.train()
    with torch.enable_grad():  # also under torch.set_grad_enabled(False), as chapter 8 runs
        for _ in tqdm(range(n_steps), disable=not progress, desc="copy detector", leave=False):
            x = images[torch.randperm(len(images), generator=g)[:batch_size]]
            z = F.normalize(net.project(torch.cat([augment(x, g), augment(x, g)])), dim=1)
            logits = (z @ z.T / temperature).fill_diagonal_(-math.inf)
            loss = F.cross_entropy(logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
    net.eval()
    net.history = history
    return net


#: The committed copy detector's recipe (``python -m mempkg.retrieval train`` uses it).
COPY_DETECTOR_RECIPE = dict(data="all 1,797 digits", n_steps=1500, batch_size=256, lr=2e-3, temperature=0.1,
                            width=32, seed=0, threads=1)


def save_copy_detector(out_dir: Path | str | None = None, progress: bool = True) -> Path:
    """Train the copy detector from :data:`COPY_DETECTOR_RECIPE` and write ``out_dir/digits_copy_detector.pt``.

    Its sha256, recipe, command and training time go to ``out_dir/manifest.json`` beside those of the
    score models and classifiers (:data:`mempkg.checkpoints.ARTIFACTS` names it). Command:
    ``python -m mempkg.retrieval train``.
    """
    from . import checkpoints
    from .data import digits

    out_dir = Path(checkpoints.DATA_DIR if out_dir is None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = COPY_DETECTOR_RECIPE
    threads = torch.get_num_threads()
    torch.set_num_threads(r["threads"])
    try:
        start = time.perf_counter()
        net = train_copy_detector(digits(), n_steps=r["n_steps"], batch_size=r["batch_size"], lr=r["lr"],
                                  temperature=r["temperature"], width=r["width"], seed=r["seed"], progress=progress)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{COPY_DETECTOR}.pt"
    torch.save({"config": net.config, "state_dict": net.state_dict(), "final_loss": net.history[-1]}, path)
    checkpoints.write_entry(out_dir, COPY_DETECTOR, path, dict(r), seconds, sum(p.numel() for p in net.parameters()),
                            command=checkpoints.ARTIFACTS[COPY_DETECTOR], final_loss=round(net.history[-1], 4))
    return path


def copy_detector_entry(data_dir: Path | str | None = None) -> dict:
    """The committed copy detector's record in ``data/manifest.json``: sha256, recipe, command, time."""
    from . import checkpoints

    return checkpoints.read_manifest(Path(checkpoints.DATA_DIR if data_dir is None else data_dir) /
                                     "manifest.json").get(COPY_DETECTOR, {})


def copy_detector(retrain: bool = False, device="cpu", data_dir: Path | str | None = None) -> Extractor:
    """The committed copy detector (sha256-verified) as an :class:`Extractor` ``(n, 16, 32)``.

    ``retrain=True`` trains it again from :data:`COPY_DETECTOR_RECIPE` (one to two minutes) instead.
    Raises ``FileNotFoundError`` when the file or its record is missing and
    :class:`~mempkg.checkpoints.ChecksumError` when its sha256 differs from the record, like
    :func:`mempkg.checkpoints.load_model`.
    """
    import tempfile

    from . import checkpoints

    data_dir = Path(checkpoints.DATA_DIR if data_dir is None else data_dir)
    if retrain:
        with tempfile.TemporaryDirectory() as tmp:
            state = torch.load(save_copy_detector(tmp, progress=False), map_location=device, weights_only=True)
    else:
        state = checkpoints.verified_state(COPY_DETECTOR, data_dir, device)
    net = CopyDetectorNet(**state["config"]).to(device)
    net.load_state_dict(state["state_dict"])
    return Extractor(net.eval(), "copy_detector")


def load_extractor(path: Path | str, module: nn.Module | None = None, name: str | None = None, preprocess=None,
                   device="cpu", batch_size: int = 64) -> Extractor:
    """A feature extractor from a file the user names: TorchScript, or a state dict for ``module``.

    SSCD (``sscd_disc_mixup.torchscript.pt``) and DINO weights cannot be downloaded here; with a local
    copy, ``load_extractor("sscd_disc_mixup.torchscript.pt", preprocess=...)`` plugs them into every
    function of this module. The output may be a vector (one chunk), tokens or a feature map (one
    chunk per position): see :class:`Extractor`. Pass ``preprocess`` to resize digits and repeat
    the grey channel to what the model expects (SSCD: 3 channels, ImageNet normalisation).

    Parameters
    ----------
    path : a TorchScript archive (``torch.jit.save``), or a state dict (``torch.save(m.state_dict())``)
        when ``module`` is given
    module : nn.Module with the architecture the state dict belongs to
    name : for tables (default: the file name)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must name an existing file, got {str(path)!r}")
    name = name or path.stem
    if module is None:
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x but is what SSCD ships
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location=device)
        except RuntimeError as err:
            raise ValueError(f"path {str(path)!r} is not a TorchScript archive; for a state dict pass module=") from err
    else:
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"path {str(path)!r} does not hold a state dict")
        module.load_state_dict(state)
        net = module.to(device)
    return Extractor(net.eval(), name, preprocess=preprocess, batch_size=batch_size)


def imagenet_preprocess(size: int | None = 224):
    """The ``preprocess`` of :func:`load_extractor` for ImageNet-trained extractors (SSCD, DINO).

    Maps images in [-1, 1] of shape ``(n, 1 or 3, H, W)`` to what those networks expect: [0, 1],
    a grey channel repeated to three, resized to ``size x size`` (bilinear; ``None`` keeps the
    size), normalised by ImageNet's channel mean and standard deviation.
    """
    if size is not None:
        size = check_positive_int(size, "size")
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (n, 1 or 3, H, W), got {tuple(x.shape)}")
        x = (x.float() + 1) / 2
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - mean.to(x)) / std.to(x)

    return preprocess


# --- a benchmark of known replicas ----------------------------------------------------------------


@dataclass
class Replicas:
    """Queries built from training images and the training images they come from.

    Attributes
    ----------
    queries : tensor ``(n, C, H, W)``
    sources : long tensor ``(n, 2)``, indices into the training set; the second column is -1 for
        a single source (augmented copies)
    kind : ``"augment"``, ``"collage"`` or ``"patch"``
    """

    queries: torch.Tensor
    sources: torch.Tensor
    kind: str


def replica_benchmark(train: torch.Tensor, kind: str = "augment", n: int = 500, patch: int = 4,
                      generator: torch.Generator | None = None) -> Replicas:
    """Known replicas of training images: Somepalli et al.'s retrieval benchmark rebuilt for digits.

    * ``"augment"``: an :func:`augment` copy of image A (one source).
    * ``"collage"``: the top half of A above the bottom half of B (two sources, p. 4's car and tree).
    * ``"patch"``: a ``patch x patch`` square of A pasted into B at the same place (two sources;
      A's content is the replicated object, B the background).

    A and B are distinct images drawn with ``generator``. Returns :class:`Replicas`.
    """
    check_choice(kind, "kind", ("augment", "collage", "patch"))
    n = check_positive_int(n, "n")
    patch = check_positive_int(patch, "patch")
    if not isinstance(train, torch.Tensor) or train.ndim != 4 or len(train) < 2:
        raise ValueError(f"train must be a tensor (m, C, H, W) with m >= 2, got "
                         f"{tuple(train.shape) if isinstance(train, torch.Tensor) else type(train).__name__}")
    m, _, h, w = train.shape
    if patch > min(h, w):
        raise ValueError(f"patch must be at most {min(h, w)}, got {patch}")
    g = generator
    a = torch.randint(0, m, (n,), generator=g)
    b = (a + torch.randint(1, m, (n,), generator=g)) % m
    if kind == "augment":
        return Replicas(augment(train[a], g), torch.stack([a, torch.full_like(a, -1)], 1), kind)
    if kind == "collage":
        q = train[b].clone()
        q[:, :, : h // 2] = train[a][:, :, : h // 2]
        return Replicas(q, torch.stack([a, b], 1), kind)
    r0 = torch.randint(0, h - patch + 1, (n,), generator=g)
    c0 = torch.randint(0, w - patch + 1, (n,), generator=g)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (rows >= r0[:, None, None]) & (rows < r0[:, None, None] + patch)
    inside = inside & (cols >= c0[:, None, None]) & (cols < c0[:, None, None] + patch)
    q = torch.where(inside[:, None].to(train.device), train[a], train[b])
    return Replicas(q, torch.stack([a, b], 1), kind)


def _check_relevant(sim_or_ranked, relevant):
    if not isinstance(relevant, torch.Tensor) or relevant.ndim != 2 or len(relevant) != len(sim_or_ranked):
        raise ValueError(f"relevant must be a long tensor (n, r) with n = {len(sim_or_ranked)} (-1 pads), got "
                         f"{tuple(relevant.shape) if isinstance(relevant, torch.Tensor) else type(relevant).__name__}")
    if not bool((relevant >= 0).any(1).all()):
        raise ValueError("relevant must name at least one source per query")


def recall_at_k(indices: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Fraction of (query, source) pairs whose source is among the query's ``k`` first results.

    Parameters
    ----------
    indices : long tensor ``(n, K)``, ranked retrieval results (:func:`topk`), K >= k
    relevant : long tensor ``(n, r)``, each query's sources, -1 padded (:attr:`Replicas.sources`)
    k : int
    """
    k = check_positive_int(k, "k")
    _check_relevant(indices, relevant)
    if k > indices.shape[1]:
        raise ValueError(f"k must be at most the {indices.shape[1]} results retrieved, got {k}")
    found = (indices[:, None, :k] == relevant.to(indices.device)[:, :, None]).any(2)
    valid = relevant >= 0
    return float(found[valid.to(found.device)].float().mean())


def mean_average_precision(similarities: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean over queries of the average precision of the ranking by ``similarities``.

    With the query's R sources at ranks ``r_1 < ... < r_R`` (1 = most similar; ties count against),
    ``AP = (1/R) sum_i i / r_i``. Parameters: ``similarities (n, m)``, ``relevant (n, r)`` -1 padded.
    """
    _check_relevant(similarities, relevant)
    aps = []
    for row, rel in zip(similarities, relevant):
        rel = rel[rel >= 0].to(row.device)
        ranks = ((row[None, :] >= row[rel][:, None]).sum(1)).sort().values.double()
        aps.append(float((torch.arange(1, len(rel) + 1, dtype=torch.float64) / ranks.cpu()).mean()))
    return sum(aps) / len(aps)


# --- replication rates ----------------------------------------------------------------------------


def _scores(x, name):
    x = torch.as_tensor(x).detach().flatten().double().cpu()
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    return x


def calibrate_threshold(heldout_scores, fpr: float = 0.01) -> float:
    """The similarity above which only a fraction ``fpr`` of held-out images' top-1 scores lie.

    Held-out images were never trained on, so a generation above this threshold is as similar to
    the training set as only ``fpr`` of genuinely new images are: a threshold with a stated false
    positive rate, for any extractor and similarity (the paper's 0.5 is SSCD-specific).
    """
    x = _scores(heldout_scores, "heldout_scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    return float(torch.quantile(x, 1 - fpr))


@dataclass
class Rate:
    """A replication rate: ``count`` of ``n`` scores above ``threshold``, with a Wilson interval."""

    rate: float
    count: int
    n: int
    low: float
    high: float
    threshold: float


def wilson_interval(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``count / n`` at confidence ``level``."""
    n = check_positive_int(n, "n")
    count = check_positive_int(count, "count", allow_zero=True)
    if count > n:
        raise ValueError(f"count must be at most n = {n}, got {count}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def replication_rate(scores, threshold: float = PAPER_THRESHOLD, level: float = 0.95) -> Rate:
    """Fraction of generations whose top-1 similarity exceeds ``threshold`` (seed 003's ``sim > 0.5``).

    Parameters
    ----------
    scores : tensor ``(n,)`` of top-1 similarities (:func:`top1`)
    threshold : :data:`PAPER_THRESHOLD` (the released code, SSCD cosine) or :func:`calibrate_threshold`
    level : confidence of the Wilson interval
    """
    x = _scores(scores, "scores")
    count = int((x > threshold).sum())
    low, high = wilson_interval(count, len(x), level)
    return Rate(count / len(x), count, len(x), low, high, float(threshold))


def trend_test(counts, totals, scores=None) -> tuple[float, float]:
    """Cochran-Armitage test for a trend in proportions ``counts / totals`` across ordered groups.

    Parameters
    ----------
    counts, totals : sequences of ints, one per group
    scores : the groups' ordinal scores (default 0, 1, 2, ...), e.g. ``log(training-set size)``

    Returns
    -------
    z : float, negative when the proportion falls with the score; p : two-sided p-value
    """
    k = torch.as_tensor(counts, dtype=torch.float64)
    n = torch.as_tensor(totals, dtype=torch.float64)
    if k.ndim != 1 or len(k) < 2 or k.shape != n.shape:
        raise ValueError(f"counts and totals must be 1-D of the same length >= 2, got {tuple(k.shape)} and {tuple(n.shape)}")
    if bool((n <= 0).any()) or bool((k < 0).any()) or bool((k > n).any()):
        raise ValueError("totals must be > 0 and counts must lie in [0, totals]")
    s = torch.arange(len(k), dtype=torch.float64) if scores is None else torch.as_tensor(scores, dtype=torch.float64)
    if s.shape != k.shape:
        raise ValueError(f"scores must have one value per group ({len(k)}), got {tuple(s.shape)}")
    p = k.sum() / n.sum()
    t = (s * (k - n * p)).sum()
    var = p * (1 - p) * ((n * s * s).sum() - (n * s).sum() ** 2 / n.sum())
    if var <= 0:
        return 0.0, 1.0
    z = float(t / var.sqrt())
    return z, math.erfc(abs(z) / math.sqrt(2))


def overlap(a, b, bins: int = 50) -> dict:
    """How much two score distributions overlap: KS statistic and p-value, overlap coefficient.

    The overlap coefficient is ``sum_bins min(p_a, p_b)`` of the two histograms on common bins
    (1 = identical, 0 = disjoint); seed 003, p. 6: at the full training set the generated-to-train
    and train-to-train histograms "are highly overlapping".

    Returns
    -------
    dict with ``ks``, ``ks_p``, ``overlap``, and the 99th percentiles ``q99_a``, ``q99_b``.
    """
    from scipy.stats import ks_2samp

    x, y = _scores(a, "a"), _scores(b, "b")
    bins = check_positive_int(bins, "bins")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    hx = torch.histc(x, bins, lo, hi) / len(x)
    hy = torch.histc(y, bins, lo, hi) / len(y)
    ks = ks_2samp(x.numpy(), y.numpy())
    return dict(ks=float(ks.statistic), ks_p=float(ks.pvalue), overlap=float(torch.minimum(hx, hy).sum()),
                q99_a=float(torch.quantile(x, 0.99)), q99_b=float(torch.quantile(y, 0.99)))


def never_seen(pool: torch.Tensor, *train_sets: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``(len(pool),)``: the images of ``pool`` equal to no image of any training set.

    The held-out images of chapter 8: never trained on by any of the models compared, so one
    held-out set serves every training-set size. Images are compared by the bytes of their pixels
    (equal bytes exactly when equal values), so 50,000 CIFAR-10 images cost one pass over them.
    """
    if not isinstance(pool, torch.Tensor) or pool.ndim < 2 or len(pool) == 0:
        raise ValueError("pool must be a non-empty tensor of images (n, ...)")

    def rows(x):  # + 0.0 turns -0.0 into 0.0, so that bytes are equal exactly when values are
        return (x.detach().flatten(1).to(pool.dtype) + 0.0).cpu().numpy()

    known = set()
    for i, train in enumerate(train_sets):
        if train.shape[1:] != pool.shape[1:]:
            raise ValueError(f"train_sets[{i}] must have images shaped like pool {tuple(pool.shape[1:])}, "
                             f"got {tuple(train.shape[1:])}")
        known.update(row.tobytes() for row in rows(train))
    seen = torch.tensor([row.tobytes() in known for row in rows(pool)], dtype=torch.bool)
    return ~seen.to(pool.device)


def evaluate_retrieval(query_feats: torch.Tensor, train_feats: torch.Tensor, relevant: torch.Tensor,
                       similarity="cosine", ks=(1, 5), n_chunks: int | None = None, normalize: str = "global") -> dict:
    """Recall@k, mAP and the share of queries whose every source is in the top ``max(ks)``.

    Parameters
    ----------
    query_feats : ``(n, n_chunks, dim)`` features of the replicas; train_feats : ``(m, n_chunks, dim)``
    relevant : ``(n, r)`` sources, -1 padded (:attr:`Replicas.sources`)
    similarity, n_chunks, normalize : as in :func:`similarity_matrix`

    Returns
    -------
    dict ``{"recall@k": ..., "mAP": ..., "all sources@K": ...}``
    """
    sims = similarity_matrix(query_feats, train_feats, similarity, n_chunks, normalize)
    kmax = max(ks)
    ranked = sims.topk(kmax, dim=1).indices
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mAP"] = mean_average_precision(sims, relevant)
    hit = (ranked[:, None, :] == relevant[:, :, None].to(ranked.device)).any(2) | (relevant < 0).to(ranked.device)
    out[f"all sources@{kmax}"] = float(hit.all(1).float().mean())
    return out


@dataclass
class Replication:
    """Top-1 similarities of generations, training images and held-out images to one training set.

    Attributes
    ----------
    gen, gen_index : ``(n_gen,)`` top-1 similarity of each generation and its matched training image
    train : ``(m,)`` train-to-train top-1 (self excluded); held : ``(n_held,)`` held-out-to-train
    threshold : calibrated on ``held`` at false-positive rate ``fpr``
    calibrated, paper : :class:`Rate` of generations above ``threshold`` and above :data:`PAPER_THRESHOLD`
    """

    gen: torch.Tensor
    gen_index: torch.Tensor
    train: torch.Tensor
    held: torch.Tensor
    fpr: float
    threshold: float
    calibrated: Rate
    paper: Rate


def replication_report(gen_feats: torch.Tensor, train_feats: torch.Tensor, held_feats: torch.Tensor,
                       similarity="cosine", fpr: float = 0.01, n_chunks: int | None = None,
                       normalize: str = "global") -> Replication:
    """Seed 003's histogram statistics for one model and one extractor, with a calibrated threshold.

    Computes gen-to-train top-1 (with the matched index), train-to-train top-1 with self excluded
    (the released code's baseline) and held-out-to-train top-1 (a baseline of images the model never
    saw, which also calibrates the threshold: :func:`calibrate_threshold`), then the replication rate
    above the calibrated threshold and above the paper's 0.5. Features ``(n, n_chunks, dim)``.
    """
    kw = dict(similarity=similarity, n_chunks=n_chunks, normalize=normalize)
    gen, gen_index = top1(gen_feats, train_feats, **kw)
    train, _ = top1(train_feats, train_feats, exclude_self=True, **kw)
    held, _ = top1(held_feats, train_feats, **kw)
    tau = calibrate_threshold(held, fpr)
    return Replication(gen, gen_index, train, held, fpr, tau, replication_rate(gen, tau),
                       replication_rate(gen, PAPER_THRESHOLD))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["train"]:
        print("usage: python -m mempkg.retrieval train   (re-creates data/digits_copy_detector.pt)")
        sys.exit(2)
    out = save_copy_detector()
    print(f"{out}: {out.stat().st_size} bytes")
