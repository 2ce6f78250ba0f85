"""The book's trained models: named recipes, committed checkpoints, and a sha256 manifest.

Chapters 4-5 (and later 9-13) need networks that memorize part of their training set. Each is
described by a *recipe* in :data:`RECIPES` (data, architecture, training settings, seeds), trained
once with ``python -m mempkg train NAME`` and committed as ``data/NAME.pt``; ``data/manifest.json``
records its sha256, the recipe, the command and the training time. :func:`load_model` refuses a
file whose hash does not match the manifest, and ``retrain=True`` rebuilds the model from its recipe
instead of loading it.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from . import data as data_module
from .nets import build_net
from .score import NetworkScore
from .sde import VPSDE
from .train import train_score_model

__all__ = ["RECIPES", "DATA_DIR", "MANIFEST", "ChecksumError", "sha256", "training_data", "training_labels", "held_out_data", "duplicated_indices",
           "train_recipe", "load_model", "read_manifest"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MANIFEST = DATA_DIR / "manifest.json"

RECIPES: dict[str, dict] = {
    "digits64_x0": dict(
        description="Overfitted model of chapter 4: 64 digits and their horizontal flips (128 images), "
                    "x0-prediction, trained until it reproduces them.",
        data=dict(name="digits", n=64, seed=0, flip=True),
        net=dict(kind="mlp", data_shape=[1, 8, 8], hidden=256, n_blocks=3, time_dim=64),
        train=dict(n_steps=10_000, batch_size=128, lr=1e-3, parameterization="x0", snr_cap=5.0, t_min=1e-3, seed=0),
        init_seed=0,
        threads=2,
    ),
    "digits1000_x0": dict(
        description="Partly memorizing model of chapter 5: 1,000 digits, 20 of which appear 10 times "
                    "(1,180 rows), x0-prediction, stopped while only part of the set is copied.",
        data=dict(name="digits", n=1000, seed=0, duplicate=dict(n=20, times=10, seed=1)),
        net=dict(kind="mlp", data_shape=[1, 8, 8], hidden=256, n_blocks=3, time_dim=64),
        train=dict(n_steps=30_000, batch_size=128, lr=1e-3, parameterization="x0", snr_cap=5.0, t_min=1e-3, seed=0),
        init_seed=0,
        threads=2,
    ),
    "vonmises_x0": dict(
        description="Chapter 10's model in the plane: 100 points of a von Mises law on the unit circle "
                    "(kappa = 4) plus a point mass at the origin (weight 0.2), one circle point placed "
                    "opposite the mode; x0-prediction, cosine learning rate.",
        data=dict(name="von_mises_mixture", n=100, kappa=4.0, mu=0.0, origin_weight=0.2, isolated=math.pi, seed=0),
        net=dict(kind="mlp", data_shape=[2], hidden=128, n_blocks=3, time_dim=32),
        train=dict(n_steps=40_000, batch_size=128, lr=2e-3, lr_schedule="cosine", parameterization="x0", snr_cap=5.0,
                   t_min=1e-3, seed=0),
        init_seed=0,
        threads=1,
    ),
    "digits_rare3_x0": dict(
        description="Chapter 12's class-conditional model: 100 digits of every class but 3, which has 5; "
                    "x0-prediction, class labels dropped with probability 0.1 for classifier-free guidance.",
        data=dict(name="digits_with_rare_class", rare=3, n_rare=5, n_per_class=100, seed=0),
        net=dict(kind="mlp", data_shape=[1, 8, 8], hidden=256, n_blocks=3, time_dim=64, n_classes=10),
        train=dict(n_steps=20_000, batch_size=128, lr=1e-3, parameterization="x0", snr_cap=5.0, t_min=1e-3, seed=0,
                   label_dropout=0.1),
        init_seed=0,
        threads=2,
    ),
}


class ChecksumError(ValueError):
    """A checkpoint's sha256 does not match the manifest."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict:
    """The manifest as a dict ``{name: entry}`` (empty when the file does not exist)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _recipe(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"name must be one of {', '.join(map(repr, RECIPES))}, got {name!r}")
    return RECIPES[name]


def training_data(name: str, dtype=torch.float32, distinct: bool = False) -> torch.Tensor:
    """The training set of recipe ``name``, exactly as the model saw it.

    A recipe may duplicate some images (``data.duplicate = {n, times, seed}``): ``n`` images chosen
    with ``seed`` appear ``times`` times in all, the extra copies appended after the distinct
    images. ``distinct=True`` returns the distinct images only (what memorization is measured
    against); :func:`duplicated_indices` says which of them were duplicated.
    """
    dup = _recipe(name)["data"].get("duplicate")
    images = _load_distinct(name, dtype)
    if dup is None or distinct:
        return images
    extra = images[duplicated_indices(name)].repeat(dup["times"] - 1, *([1] * (images.ndim - 1)))
    return torch.cat([images, extra])


def training_labels(name: str) -> torch.Tensor:
    """Class labels of the recipe's distinct training images (same order as ``training_data``)."""
    return _load_distinct(name, return_labels=True)[1]


def _load_distinct(name: str, dtype=torch.float32, return_labels: bool = False):
    """The recipe's data set before any duplication (with its flips, when the recipe flips)."""
    spec = {k: v for k, v in _recipe(name)["data"].items() if k != "duplicate"}
    return data_module.load(spec.pop("name"), dtype=dtype, return_labels=return_labels, **spec)


def held_out_data(name: str, n: int | None = None, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Images of the recipe's data set that the model never saw, prepared like its training set.

    Draws ``n`` (all when None) of the data set's images that are not among the training images,
    with ``seed``; when the recipe flips its training images, the flips of the held-out images are
    appended too, so both sets have the same mix of originals and mirror images.
    """
    spec = dict(_recipe(name)["data"])
    source = data_module.load(spec["name"], dtype=dtype)
    train = training_data(name, dtype=dtype, distinct=True)
    if spec.get("flip"):
        train = train[: len(train) // 2]
    seen = (source.flatten(1)[:, None, :] == train.flatten(1)[None, :, :]).all(2).any(1)
    pool = source[~seen]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        if not 1 <= n <= len(pool):
            raise ValueError(f"n must lie in 1..{len(pool)} (the images the model never saw), got {n}")
        order = order[:n]
    images = pool[order]
    return torch.cat([images, data_module.horizontal_flip(images)]) if spec.get("flip") else images


def duplicated_indices(name: str) -> torch.Tensor:
    """Indices (into the distinct images) of the images a recipe duplicates; empty when none."""
    spec = _recipe(name)["data"]
    dup = spec.get("duplicate")
    if dup is None:
        return torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(dup["seed"])
    return torch.randperm(spec["n"], generator=g)[: dup["n"]].sort().values


def train_recipe(name: str, out_dir: Path | str = DATA_DIR, progress: bool = True, update_manifest: bool = True) -> Path:
    """Train the model of recipe ``name`` from scratch; write ``out_dir/NAME.pt`` (and the manifest).

    Training is seeded (network initialisation and every draw of the loop) and runs with the
    recipe's thread count, so it is reproducible on the same machine; across machines the
    floating-point order of operations may differ. Returns the checkpoint's path.
    """
    recipe = _recipe(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        torch.manual_seed(recipe["init_seed"])
        net = build_net(recipe["net"])
        train_data = training_data(name)
        labels = training_labels(name) if recipe["net"].get("n_classes") else None
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train_score_model(net, train_data, VPSDE(), checkpoint=Path(tmp) / "resume.ckpt", progress=progress,
                              labels=labels, **recipe["train"])
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.pt"
    torch.save({"config": net.config, "parameterization": recipe["train"]["parameterization"],
                "state_dict": net.state_dict()}, path)
    if update_manifest:
        manifest_path = out_dir / "manifest.json"
        manifest = read_manifest(manifest_path)
        manifest[name] = dict(file=path.name, sha256=sha256(path), recipe=recipe, command=f"python -m mempkg train {name}",
                              training_seconds=round(seconds, 1), torch=torch.__version__, machine=platform.machine(),
                              parameters=sum(p.numel() for p in net.parameters()))
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_model(name: str, retrain: bool = False, device="cpu", data_dir: Path | str = DATA_DIR) -> NetworkScore:
    """The trained model of recipe ``name`` as a :class:`~mempkg.score.NetworkScore` (VP-SDE).

    Parameters
    ----------
    name : a key of :data:`RECIPES`
    retrain : bool
        Train the model from its recipe (minutes) instead of loading the committed checkpoint.
    device : where to put the network
    data_dir : folder of the checkpoints and ``manifest.json``

    Raises
    ------
    FileNotFoundError when the checkpoint or its manifest entry is missing;
    ChecksumError when the file's sha256 differs from the manifest (a corrupt or replaced file).
    """
    _recipe(name)
    data_dir = Path(data_dir)
    if retrain:
        with tempfile.TemporaryDirectory() as tmp:
            path = train_recipe(name, out_dir=tmp, update_manifest=False)
            state = torch.load(path, map_location=device, weights_only=True)
    else:
        path = data_dir / f"{name}.pt"
        entry = read_manifest(data_dir / "manifest.json").get(name)
        if entry is None or not path.exists():
            raise FileNotFoundError(f"no checkpoint for {name!r} in {data_dir} (file and manifest entry needed); "
                                    f"create it with `python -m mempkg train {name}` or pass retrain=True")
        actual = sha256(path)
        if actual != entry["sha256"]:
            raise ChecksumError(f"{path} has sha256 {actual} but the manifest records {entry['sha256']}: the file is "
                                f"corrupt or was replaced. Restore it from git or re-create it with "
                                f"`python -m mempkg train {name}`.")
        state = torch.load(path, map_location=device, weights_only=True)
    net = build_net(state["config"]).to(device)
    net.load_state_dict(state["state_dict"])
    net.eval()
    return NetworkScore(net, VPSDE(), state["parameterization"])
