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
from .sampling import sample_ode
from .score import NetworkScore
from .sde import VPSDE
from .side import tdkd, train_classifier
from .train import TrainConfig, train_score_model

__all__ = ["Recipe", "ClassifierRecipe", "RECIPES", "load_classifier", "synthetic_set", "DATA_DIR", "MANIFEST", "ChecksumError", "sha256", "train_recipe", "load_model",
           "read_manifest", "write_entry", "verified_state", "ARTIFACTS", "training_data", "training_labels", "held_out_data", "duplicated_indices"]

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
SIDE_TARGET_STEPS = 12_000

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
    _recipe("digits32_eps",
            "Epsilon-prediction control of chapters 4-5: 32 digits and their horizontal flips (64 "
            "images), the same network as digits64_x0, trained until it copies part of them.",
            DataRecipe("digits", dict(n=32, seed=0, flip=True)), _DIGITS_MLP, threads=1,
            n_steps=18_000, batch_size=128, lr=1e-3, parameterization="eps", t_min=1e-3, seed=0),
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


@dataclass(frozen=True)
class ClassifierRecipe:
    """How one of the book's classifiers is made (SIDE, seed 002; chapter 7).

    Attributes
    ----------
    name, description : as in :class:`Recipe`
    target : str, the score model (a key of :data:`RECIPES`) the classifier is about
    kind : ``"teacher"``, a normal (time-independent) classifier trained on the target's training
        images and their true labels (OL-TI); or ``"student"``, a time-dependent classifier
        distilled by TDKD from ``teacher`` on ``n_synthetic`` samples of the target (SIDE)
    net : dict, the :class:`~mempkg.nets.ResNetClassifier` configuration
    n_steps, batch_size, lr, seed : the optimisation
    teacher : str, for a student: the teacher's recipe name
    n_synthetic, sample_steps : for a student: the synthetic set (Heun steps of the sampler)
    threads : int, torch threads for training
    """

    name: str
    description: str
    target: str
    kind: str
    net: dict
    n_steps: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    teacher: str | None = None
    n_synthetic: int = 0
    sample_steps: int = 50
    threads: int = 2

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "name"}


_SIDE_NET = dict(kind="resnet_classifier", data_shape=[1, 8, 8], n_classes=10, width=16, n_blocks=2, time_dim=32)

RECIPES.update({r.name: r for r in [
    _recipe("digits1000_side",
            "SIDE's target (chapter 7): 1,000 distinct digits, x0-prediction, stopped early so that only a "
            "few percent of its unconditional samples copy a training image.",
            DataRecipe("digits", dict(n=1000, seed=0)), _DIGITS_MLP, n_steps=SIDE_TARGET_STEPS, **_X0),
    ClassifierRecipe("digits1000_side_teacher",
                     "The normal classifier of chapter 7 (OL-TI): a small ResNet trained on the target's 1,000 "
                     "training digits and their true labels, clean images only.",
                     target="digits1000_side", kind="teacher", net=dict(_SIDE_NET, time_dependent=False),
                     n_steps=2000, batch_size=128, lr=1e-3, seed=0),
    ClassifierRecipe("digits1000_side_student",
                     "SIDE's time-dependent classifier (chapter 7): distilled by TDKD from the teacher on 5,000 "
                     "samples of the target, VP-noised, soft labels; it never sees a training image.",
                     target="digits1000_side", kind="student", net=dict(_SIDE_NET, time_dependent=True),
                     n_steps=4000, batch_size=256, lr=1e-3, seed=0, teacher="digits1000_side_teacher",
                     n_synthetic=5000, sample_steps=50),
]})

#: Chapter 8's training-set sizes (the analogue of Somepalli et al.'s 300 / 3,000 / full): one recipe,
#: only the number of digits changes; fixed steps, so smaller sets see more epochs.
RETRIEVAL_SIZES = (30, 300, 1500)
RETRIEVAL_STEPS = 5000

RECIPES.update({r.name: r for r in [
    _recipe(f"digits{n}_x0",
            f"Chapter 8's size sweep: {n:,} digits, x0-prediction, {RETRIEVAL_STEPS:,} steps "
            f"(the same recipe for 30, 300 and 1,500 digits).",
            DataRecipe("digits", dict(n=n, seed=0)), _DIGITS_MLP, n_steps=RETRIEVAL_STEPS, **_X0)
    for n in RETRIEVAL_SIZES
]})


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


def _get(name: str):
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


#: Committed artifacts trained outside :data:`RECIPES`, by name: the command that re-creates each.
#: They share ``data/manifest.json`` and its sha256 check with the recipes.
ARTIFACTS = {"digits_copy_detector": "python -m mempkg.retrieval train"}


def write_entry(out_dir: Path, name: str, path: Path, recipe: dict, seconds: float, n_parameters: int,
                command: str | None = None, **extra) -> None:
    """Record a checkpoint in ``out_dir/manifest.json``: sha256, recipe, command, training time."""
    manifest_path = Path(out_dir) / "manifest.json"
    manifest = read_manifest(manifest_path)
    manifest[name] = dict(file=path.name, sha256=sha256(path), recipe=recipe,
                          command=command or f"python -m mempkg train {name}", training_seconds=round(seconds, 1),
                          torch=torch.__version__, machine=platform.machine(), parameters=n_parameters, **extra)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def train_recipe(name: str, out_dir: Path | str = DATA_DIR, progress: bool = True, update_manifest: bool = True) -> Path:
    """Train the model of recipe ``name`` from scratch; write ``out_dir/NAME.pt`` (and the manifest).

    Training is seeded (network initialisation and every draw of the loop) and runs with the
    recipe's thread count, so it is reproducible on the same machine; across machines the
    floating-point order of operations may differ. Works for score models (:class:`Recipe`) and
    classifiers (:class:`ClassifierRecipe`; a student needs its target and teacher in ``out_dir``
    or in the committed ``data/``). Returns the checkpoint's path.
    """
    recipe = _get(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        start = time.perf_counter()
        if isinstance(recipe, ClassifierRecipe):
            net, extra = _train_classifier_recipe(recipe, out_dir, progress)
        else:
            net, extra = _train_score_recipe(recipe, progress)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.pt"
    torch.save({"config": net.config, "state_dict": net.state_dict(), **extra}, path)
    if update_manifest:
        write_entry(out_dir, name, path, recipe.to_dict(), seconds, sum(p.numel() for p in net.parameters()))
    return path


def _train_score_recipe(recipe: Recipe, progress: bool):
    torch.manual_seed(recipe.init_seed)
    net = build_net(recipe.net)
    train_data = data_module.training_set(recipe.data)
    labels = data_module.training_labels(recipe.data) if recipe.net.get("n_classes") else None
    with tempfile.TemporaryDirectory() as tmp:
        train_score_model(net, train_data, VPSDE(), recipe.train, checkpoint=Path(tmp) / "resume.ckpt",
                          progress=progress, labels=labels)
    return net, {"parameterization": recipe.train.parameterization}


def _train_classifier_recipe(recipe: ClassifierRecipe, out_dir: Path, progress: bool):
    torch.manual_seed(recipe.seed)
    net = build_net(recipe.net)
    spec = _get(recipe.target).data
    if recipe.kind == "teacher":
        x = data_module.training_set(spec, distinct=True)
        train_classifier(net, x, data_module.training_labels(spec), n_steps=recipe.n_steps,
                         batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed, progress=progress)
        return net, {}
    where = out_dir if (out_dir / f"{recipe.teacher}.pt").exists() else DATA_DIR
    teacher = load_classifier(recipe.teacher, data_dir=where)
    target_dir = out_dir if (out_dir / f"{recipe.target}.pt").exists() else DATA_DIR
    synthetic = synthetic_set(recipe.name, retrain=True, data_dir=target_dir)
    tdkd(net, teacher, synthetic, VPSDE(), n_steps=recipe.n_steps, batch_size=recipe.batch_size, lr=recipe.lr,
         seed=recipe.seed, progress=progress)
    return net, {"synthetic": synthetic}


def verified_state(name: str, data_dir: Path | str = DATA_DIR, device="cpu"):
    """The checkpoint ``data_dir/NAME.pt``, loaded after checking its sha256 against the manifest.

    Raises ``FileNotFoundError`` when the file or its manifest entry is missing and
    :class:`ChecksumError` when the file's sha256 differs from the manifest's.
    """
    data_dir = Path(data_dir)
    path = data_dir / f"{name}.pt"
    entry = read_manifest(data_dir / "manifest.json").get(name)
    command = ARTIFACTS.get(name, f"python -m mempkg train {name}")
    if entry is None or not path.exists():
        raise FileNotFoundError(f"no checkpoint for {name!r} in {data_dir} (file and manifest entry needed); "
                                f"create it with `{command}` or pass retrain=True")
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise ChecksumError(f"{path} has sha256 {actual} but the manifest records {entry['sha256']}: the file is "
                            f"corrupt or was replaced. Restore it from git or re-create it with `{command}`.")
    return torch.load(path, map_location=device, weights_only=True)


def _state(name: str, retrain: bool, device, data_dir):
    if retrain:
        with tempfile.TemporaryDirectory() as tmp:
            path = train_recipe(name, out_dir=tmp, update_manifest=False)
            return torch.load(path, map_location=device, weights_only=True)
    return verified_state(name, Path(data_dir), device)


def _network(state, device):
    net = build_net(state["config"]).to(device)
    net.load_state_dict(state["state_dict"])
    net.eval()
    return net


def load_model(name: str, retrain: bool = False, device="cpu", data_dir: Path | str = DATA_DIR) -> NetworkScore:
    """The trained model of recipe ``name`` as a :class:`~mempkg.score.NetworkScore` (VP-SDE).

    Parameters
    ----------
    name : a key of :data:`RECIPES` (a score model)
    retrain : bool
        Train the model from its recipe (minutes) instead of loading the committed checkpoint.
    device : where to put the network
    data_dir : folder of the checkpoints and ``manifest.json``

    Raises
    ------
    FileNotFoundError when the checkpoint or its manifest entry is missing;
    ChecksumError when the file's sha256 differs from the manifest (a corrupt or replaced file).
    """
    if not isinstance(_get(name), Recipe):
        raise ValueError(f"name must name a score model; {name!r} is a classifier (use load_classifier)")
    state = _state(name, retrain, device, data_dir)
    return NetworkScore(_network(state, device), VPSDE(), state["parameterization"])


def load_classifier(name: str, retrain: bool = False, device="cpu", data_dir: Path | str = DATA_DIR):
    """The trained classifier of recipe ``name`` (a :class:`ClassifierRecipe`), in eval mode.

    Verified against the manifest like :func:`load_model`; ``retrain=True`` trains it (and, for a
    student, draws its synthetic set) from the recipe instead.
    """
    if not isinstance(_get(name), ClassifierRecipe):
        raise ValueError(f"name must name a classifier; {name!r} is a score model (use load_model)")
    return _network(_state(name, retrain, device, data_dir), device)


def synthetic_set(name: str, retrain: bool = False, device="cpu", data_dir: Path | str = DATA_DIR) -> torch.Tensor:
    """The synthetic set a TDKD student was distilled on (Eq. 153): samples of its target model.

    Read from the student's checkpoint (sha256-verified); with ``retrain=True`` drawn again from
    the target by the recipe's sampler and seed (what :func:`train_recipe` does).
    """
    recipe = _get(name)
    if not isinstance(recipe, ClassifierRecipe) or recipe.kind != "student":
        raise ValueError(f"name must name a TDKD student recipe, got {name!r}")
    if not retrain:
        return verified_state(name, Path(data_dir), device)["synthetic"]
    score = load_model(recipe.target, data_dir=data_dir, device=device)
    return sample_ode(score, (recipe.n_synthetic, *score.data_shape), VPSDE(), n_steps=recipe.sample_steps,
                      generator=torch.Generator().manual_seed(recipe.seed), device=device)
