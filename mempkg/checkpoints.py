"""The registry of the book's trained models: named recipes, committed checkpoints, a sha256 manifest.

Chapters 4-5 and 9-13 need networks that memorize part of their training set. Each is described
by a :class:`Recipe` in :data:`RECIPES` (its data as a :class:`~mempkg.data.DataRecipe`, the
network's configuration, a :class:`~mempkg.train.TrainConfig`, seeds), trained once with
``python -m mempkg train NAME`` and committed as ``data/NAME.pt``; ``data/manifest.json`` records
its sha256, the recipe, the command and the training time. :func:`load_model` refuses a file whose
hash does not match the manifest, and ``retrain=True`` rebuilds the model from its recipe instead
of loading it. The data a recipe trains on are built by :mod:`mempkg.data`
(:func:`~mempkg.data.training_set`, :func:`~mempkg.data.held_out`, ...).
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data as data_module
from .data import DataRecipe, Duplication
from .nets import build_net
from .score import NetworkScore
from .sde import VPSDE
from .train import TrainConfig, train_score_model

__all__ = ["Recipe", "RECIPES", "DATA_DIR", "MANIFEST", "ChecksumError", "sha256", "train_recipe", "load_model",
           "read_manifest", "training_data", "training_labels", "held_out_data", "duplicated_indices"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MANIFEST = DATA_DIR / "manifest.json"

#: The order in which a recipe's training settings are written to the manifest (the keys it sets).
_TRAIN_KEYS = ("n_steps", "batch_size", "lr", "lr_schedule", "parameterization", "snr_cap", "t_min", "seed",
               "label_dropout")


@dataclass(frozen=True)
class Recipe:
    """How one of the book's models is made.

    Attributes
    ----------
    name : str, the key in :data:`RECIPES` and the checkpoint's file name ``data/NAME.pt``
    description : str, one sentence a chapter can print
    data : DataRecipe, the training data
    net : dict, the network's configuration as :func:`mempkg.nets.build_net` reads it (the
        checkpoint stores the same dict)
    train : TrainConfig
    init_seed : int, seeds the network's initialisation
    threads : int, torch threads used for training (results are reproducible per thread count)
    train_keys : tuple of str, the training settings the recipe sets explicitly (the others are
        :class:`~mempkg.train.TrainConfig`'s defaults); only these are written to the manifest
    """

    name: str
    description: str
    data: DataRecipe
    net: dict
    train: TrainConfig
    init_seed: int = 0
    threads: int = 2
    train_keys: tuple = field(default=("n_steps", "batch_size", "lr", "parameterization", "snr_cap", "t_min", "seed"),
                              repr=False)

    def to_dict(self) -> dict:
        """The recipe as recorded in ``data/manifest.json``."""
        train = {k: getattr(self.train, k) for k in _TRAIN_KEYS if k in self.train_keys}
        return dict(description=self.description, data=self.data.to_dict(), net=dict(self.net), train=train,
                    init_seed=self.init_seed, threads=self.threads)


def _recipe(name, description, data, net, train_keys=None, init_seed=0, threads=2, **train):
    keys = tuple(train) if train_keys is None else train_keys
    return Recipe(name, description, data, net, TrainConfig(**train), init_seed, threads, keys)


_DIGITS_MLP = dict(kind="mlp", data_shape=[1, 8, 8], hidden=256, n_blocks=3, time_dim=64)
_X0 = dict(batch_size=128, lr=1e-3, parameterization="x0", snr_cap=5.0, t_min=1e-3, seed=0)

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    _recipe("digits64_x0",
            "Overfitted model of chapter 4: 64 digits and their horizontal flips (128 images), "
            "x0-prediction, trained until it reproduces them.",
            DataRecipe("digits", dict(n=64, seed=0, flip=True)), _DIGITS_MLP, n_steps=10_000, **_X0),
    _recipe("digits1000_x0",
            "Partly memorizing model of chapter 5: 1,000 digits, 20 of which appear 10 times "
            "(1,180 rows), x0-prediction, stopped while only part of the set is copied.",
            DataRecipe("digits", dict(n=1000, seed=0), Duplication(n=20, times=10, seed=1)), _DIGITS_MLP,
            n_steps=30_000, **_X0),
    _recipe("vonmises_x0",
            "Chapter 10's model in the plane: 100 points of a von Mises law on the unit circle "
            "(kappa = 4) plus a point mass at the origin (weight 0.2), one circle point placed "
            "opposite the mode; x0-prediction, cosine learning rate.",
            DataRecipe("von_mises_mixture", dict(n=100, kappa=4.0, mu=0.0, origin_weight=0.2, isolated=math.pi, seed=0)),
            dict(kind="mlp", data_shape=[2], hidden=128, n_blocks=3, time_dim=32), threads=1,
            n_steps=40_000, batch_size=128, lr=2e-3, lr_schedule="cosine", parameterization="x0", snr_cap=5.0,
            t_min=1e-3, seed=0),
    _recipe("digits_rare3_x0",
            "Chapter 12's class-conditional model: 100 digits of every class but 3, which has 5; "
            "x0-prediction, class labels dropped with probability 0.1 for classifier-free guidance.",
            DataRecipe("digits_with_rare_class", dict(rare=3, n_rare=5, n_per_class=100, seed=0)),
            dict(_DIGITS_MLP, n_classes=10), n_steps=20_000, **_X0, label_dropout=0.1),
]}


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


def _get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"name must be one of {', '.join(map(repr, RECIPES))}, got {name!r}")
    return RECIPES[name]


def _deprecated_data(old: str, new: str):
    warnings.warn(f"mempkg.checkpoints.{old}(name) is deprecated; use mempkg.data.{new}(RECIPES[name].data)",
                  DeprecationWarning, stacklevel=3)


def training_data(name: str, dtype=torch.float32, distinct: bool = False) -> torch.Tensor:
    """Deprecated: :func:`mempkg.data.training_set` of ``RECIPES[name].data``."""
    _deprecated_data("training_data", "training_set")
    return data_module.training_set(_get(name).data, dtype=dtype, distinct=distinct)


def training_labels(name: str) -> torch.Tensor:
    """Deprecated: :func:`mempkg.data.training_labels` of ``RECIPES[name].data``."""
    _deprecated_data("training_labels", "training_labels")
    return data_module.training_labels(_get(name).data)


def held_out_data(name: str, n: int | None = None, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Deprecated: :func:`mempkg.data.held_out` of ``RECIPES[name].data``."""
    _deprecated_data("held_out_data", "held_out")
    return data_module.held_out(_get(name).data, n=n, seed=seed, dtype=dtype)


def duplicated_indices(name: str) -> torch.Tensor:
    """Deprecated: :func:`mempkg.data.duplicated_indices` of ``RECIPES[name].data``."""
    _deprecated_data("duplicated_indices", "duplicated_indices")
    return data_module.duplicated_indices(_get(name).data)


def train_recipe(name: str, out_dir: Path | str = DATA_DIR, progress: bool = True, update_manifest: bool = True) -> Path:
    """Train the model of recipe ``name`` from scratch; write ``out_dir/NAME.pt`` (and the manifest).

    Training is seeded (network initialisation and every draw of the loop) and runs with the
    recipe's thread count, so it is reproducible on the same machine; across machines the
    floating-point order of operations may differ. Returns the checkpoint's path.
    """
    recipe = _get(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.init_seed)
        net = build_net(recipe.net)
        train_data = data_module.training_set(recipe.data)
        labels = data_module.training_labels(recipe.data) if recipe.net.get("n_classes") else None
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train_score_model(net, train_data, VPSDE(), recipe.train, checkpoint=Path(tmp) / "resume.ckpt",
                              progress=progress, labels=labels)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.pt"
    torch.save({"config": net.config, "parameterization": recipe.train.parameterization,
                "state_dict": net.state_dict()}, path)
    if update_manifest:
        manifest_path = out_dir / "manifest.json"
        manifest = read_manifest(manifest_path)
        manifest[name] = dict(file=path.name, sha256=sha256(path), recipe=recipe.to_dict(), command=f"python -m mempkg train {name}",
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
    _get(name)
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
