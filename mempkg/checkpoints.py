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

import ast
import dataclasses
import hashlib
import inspect
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
from .nets import CIFAR10_UNET, NETS, build_net
from .sampling import sample_ode
from .score import NetworkScore
from .sde import VPSDE
from .side import tdkd, train_classifier
from .train import TrainConfig, train_score_model

__all__ = ["Recipe", "ClassifierRecipe", "RECIPES", "load_classifier", "synthetic_set", "DATA_DIR", "MANIFEST", "ChecksumError", "sha256", "train_recipe", "load_model",
           "read_manifest", "write_entry", "verified_state", "ARTIFACTS", "for_dataset", "recipe_of", "with_settings",
           "parse_setting", "training_cost", "gpu_hours", "CIFAR10_COUNTERPARTS", "CIFAR_RETRIEVAL_SIZES", "DATASETS", "training_data", "training_labels", "held_out_data", "duplicated_indices"]

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

    @classmethod
    def from_dict(cls, name: str, entry: dict) -> "Recipe":
        """The recipe a manifest entry's ``recipe`` records (the inverse of :meth:`to_dict`)."""
        options = dict(entry["data"])
        data_name, duplicate = options.pop("name"), options.pop("duplicate", None)
        data = DataRecipe(data_name, options, None if duplicate is None else Duplication(**duplicate))
        train = dict(entry["train"])
        return cls(name, entry["description"], data, dict(entry["net"]), TrainConfig(**train),
                   entry.get("init_seed", 0), entry.get("threads", 2), tuple(train))


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

    @classmethod
    def from_dict(cls, name: str, entry: dict) -> "ClassifierRecipe":
        """The recipe a manifest entry's ``recipe`` records (the inverse of :meth:`to_dict`)."""
        return cls(name, **entry)


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


# --- CIFAR-10: the same experiments at 32x32 (trained on a GPU by the user) ------------------------

#: The CIFAR-10 recipes' training settings: the digits recipes' objective (x0-prediction, min-SNR
#: weight capped at 5) with DDPM's learning rate for its 36 M-parameter U-Net (Ho et al. 2020).
_CIFAR_X0 = dict(batch_size=128, lr=2e-4, parameterization="x0", snr_cap=5.0, t_min=1e-3, seed=0)
_CIFAR_SIDE_NET = dict(kind="resnet_classifier", data_shape=[3, 32, 32], n_classes=10, width=64, n_blocks=4,
                       time_dim=64)
#: Chapter 8's CIFAR-10 training-set sizes: Somepalli et al.'s 300 and 3,000, and 30,000 in place of
#: "full" (20,000 images stay unseen for the held-out statistics).
CIFAR_RETRIEVAL_SIZES = (300, 3000, 30000)

RECIPES.update({r.name: r for r in [
    _recipe("cifar10_64_x0",
            "Chapter 4 on CIFAR-10 (seed 000, Section 5.1): 2^6 images and their horizontal flips, 300,000 "
            "steps of batch 128 (the paper's 300,000 epochs: one batch is one epoch of 128 images).",
            DataRecipe("cifar10", dict(n=64, seed=0, flip=True)), CIFAR10_UNET, n_steps=300_000, **_CIFAR_X0),
    _recipe("cifar10_32_eps",
            "The epsilon-prediction control of chapters 4-5 on CIFAR-10: 32 images and their flips.",
            DataRecipe("cifar10", dict(n=32, seed=0, flip=True)), CIFAR10_UNET, n_steps=300_000,
            **dict(_CIFAR_X0, parameterization="eps")),
    _recipe("cifar10_1000_x0",
            "Chapters 5, 11 and 13 on CIFAR-10: 1,000 images, 20 of which appear 10 times, stopped while "
            "only part of the set is copied.",
            DataRecipe("cifar10", dict(n=1000, seed=0), Duplication(n=20, times=10, seed=1)), CIFAR10_UNET,
            n_steps=200_000, **_CIFAR_X0),
    _recipe("cifar10_rare3_x0",
            "Chapter 12 on CIFAR-10: 1,000 images of every class but 3 (cat), which has 5; class-conditional, "
            "labels dropped with probability 0.1.",
            DataRecipe("cifar10_with_rare_class", dict(rare=3, n_rare=5, n_per_class=1000, seed=0)),
            dict(CIFAR10_UNET, n_classes=10), n_steps=300_000, **_CIFAR_X0, label_dropout=0.1),
    _recipe("cifar10_1000_side",
            "SIDE's target on CIFAR-10 (chapter 7): 1,000 distinct images, stopped early so that only a few "
            "percent of its samples copy a training image.",
            DataRecipe("cifar10", dict(n=1000, seed=0)), CIFAR10_UNET, n_steps=100_000, **_CIFAR_X0),
    ClassifierRecipe("cifar10_1000_side_teacher",
                     "The normal classifier of chapter 7 on CIFAR-10: a ResNet on the target's 1,000 training "
                     "images and their classes.",
                     target="cifar10_1000_side", kind="teacher", net=dict(_CIFAR_SIDE_NET, time_dependent=False),
                     n_steps=10_000, batch_size=128, lr=1e-3, seed=0),
    ClassifierRecipe("cifar10_1000_side_student",
                     "SIDE's time-dependent classifier on CIFAR-10: TDKD from the teacher on 20,000 samples of "
                     "the target.",
                     target="cifar10_1000_side", kind="student", net=dict(_CIFAR_SIDE_NET, time_dependent=True),
                     n_steps=20_000, batch_size=256, lr=1e-3, seed=0, teacher="cifar10_1000_side_teacher",
                     n_synthetic=20_000, sample_steps=50),
    *[_recipe(f"cifar10_{n}_x0",
              f"Chapter 8's size sweep on CIFAR-10: {n:,} images, 200,000 steps (one recipe for every size).",
              DataRecipe("cifar10", dict(n=n, seed=0)), CIFAR10_UNET, n_steps=200_000, **_CIFAR_X0)
      for n in CIFAR_RETRIEVAL_SIZES],
]})

#: Each digits model's CIFAR-10 counterpart: the recipe a chapter loads when run with
#: ``dataset="cifar10"`` (:func:`for_dataset`).
CIFAR10_COUNTERPARTS = {
    "digits64_x0": "cifar10_64_x0", "digits32_eps": "cifar10_32_eps", "digits1000_x0": "cifar10_1000_x0",
    "digits_rare3_x0": "cifar10_rare3_x0", "digits1000_side": "cifar10_1000_side",
    "digits1000_side_teacher": "cifar10_1000_side_teacher", "digits1000_side_student": "cifar10_1000_side_student",
    **{f"digits{n}_x0": f"cifar10_{m}_x0" for n, m in zip(RETRIEVAL_SIZES, CIFAR_RETRIEVAL_SIZES)},
}

DATASETS = ("digits", "cifar10")


def for_dataset(name: str, dataset: str = "digits") -> str:
    """The recipe a chapter uses for model ``name`` when it runs on ``dataset``.

    ``"digits"`` returns ``name``; ``"cifar10"`` returns its counterpart in
    :data:`CIFAR10_COUNTERPARTS` (a name that already is a CIFAR-10 recipe is returned as it is).
    """
    _get(name)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {dataset!r}")
    if dataset == "digits" or name.startswith("cifar10"):
        return name
    if name not in CIFAR10_COUNTERPARTS:
        raise ValueError(f"model {name!r} has no CIFAR-10 counterpart; the recipes that have one: "
                         f"{', '.join(CIFAR10_COUNTERPARTS)}")
    return CIFAR10_COUNTERPARTS[name]


def recipe_of(name: str, data_dir: Path | str | None = None):
    """The recipe the checkpoint ``data_dir/NAME.pt`` was made with.

    A folder other than the committed ``data/`` may hold a model trained with other settings
    (``python -m mempkg train NAME --out DIR --set n_steps=...``); its ``manifest.json`` records the
    recipe actually used, and that is what this returns. Without a manifest entry (or for ``data/``)
    it is :data:`RECIPES` ``[name]``.
    """
    recipe = _get(name)
    if data_dir is None or Path(data_dir).resolve() == DATA_DIR:
        return recipe
    entry = read_manifest(Path(data_dir) / "manifest.json").get(name)
    if entry is None:
        return recipe
    return type(recipe).from_dict(name, entry["recipe"])


def parse_setting(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` from the command line as ``(key, value)``; the value read as a Python literal."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a setting must read KEY=VALUE (e.g. n_steps=1000 or net.base=64), got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def with_settings(recipe, settings: dict | None):
    """A copy of ``recipe`` with some settings replaced: ``{"n_steps": 2, "net.base": 8, "data.n": 40}``.

    Keys name a training setting (``n_steps``, ``batch_size``, ``lr``, ... of
    :class:`~mempkg.train.TrainConfig`), a field of the recipe (``init_seed``, ``threads``; for a
    classifier ``n_synthetic``, ``sample_steps``, ...), an entry of the network's configuration
    (``net.KEY``) or an option of the data (``data.KEY``). An unknown key raises ``ValueError``
    naming it, before anything is trained.
    """
    if not settings:
        return recipe
    fields = {f.name for f in dataclasses.fields(recipe)} - {"name", "train", "train_keys", "net", "data"}
    changes, net, train = {}, dict(recipe.net), {}
    options = dict(recipe.data.options) if isinstance(recipe, Recipe) else None
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if head == "net" and rest:
            accepted = set(inspect.signature(NETS[net["kind"]]).parameters)
            if rest not in accepted:
                raise ValueError(f"setting {key!r}: the {net['kind']} network has no setting {rest!r} "
                                 f"(it takes {', '.join(sorted(accepted))})")
            net[rest] = value
        elif head == "data" and rest and options is not None:
            options[rest] = value
        elif isinstance(recipe, Recipe) and key in train_fields:
            train[key] = value
        elif key in fields:
            changes[key] = value
        else:
            known = sorted(fields | ({"net.*", "data.*"} | train_fields if isinstance(recipe, Recipe) else {"net.*"}))
            raise ValueError(f"setting {key!r} is not a setting of recipe {recipe.name!r}; known: {', '.join(known)}")
    if isinstance(recipe, Recipe):
        duplicate = recipe.data.duplicate
        changes["data"] = DataRecipe(recipe.data.name, options, duplicate)
        changes["train"] = dataclasses.replace(recipe.train, **train)
        changes["train_keys"] = tuple(dict.fromkeys((*recipe.train_keys, *train)))
    return dataclasses.replace(recipe, net=net, **changes)


def training_cost(name: str, settings: dict | None = None) -> dict:
    """Floating-point operations of training recipe ``name``, counted, not timed.

    One forward pass of the network on one example is counted by ``torch.utils.flop_counter``; a
    training step costs about three forward passes per example (the backward pass is about two).
    Returns ``dict(parameters, forward_flops, step_flops, total_flops)``; :func:`gpu_hours` turns
    the total into hours at a stated throughput. A TDKD student adds its synthetic set's sampling
    (``n_synthetic`` samples, two score evaluations per Heun step).
    """
    from torch.utils.flop_counter import FlopCounterMode

    recipe = with_settings(_get(name), settings)
    net = build_net(recipe.net).eval()
    shape = tuple(recipe.net["data_shape"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *shape), torch.full((1,), 0.5))
    forward = counter.get_total_flops()
    batch = recipe.train.batch_size if isinstance(recipe, Recipe) else recipe.batch_size
    steps = recipe.train.n_steps if isinstance(recipe, Recipe) else recipe.n_steps
    total = 3 * forward * batch * steps
    if isinstance(recipe, ClassifierRecipe) and recipe.kind == "student":
        target = training_cost(recipe.target)
        total += target["forward_flops"] * recipe.n_synthetic * 2 * recipe.sample_steps
    return dict(parameters=sum(p.numel() for p in net.parameters()), forward_flops=forward,
                step_flops=3 * forward * batch, total_flops=total)


#: The throughput :func:`gpu_hours` assumes by default: 40 % of an NVIDIA A100's 156 TFLOP/s in TF32.
A100_TF32_FLOPS = 156e12
UTILISATION = 0.4


def gpu_hours(total_flops: float, peak: float = A100_TF32_FLOPS, utilisation: float = UTILISATION) -> float:
    """Hours for ``total_flops`` at ``utilisation`` of a ``peak`` FLOP/s: an estimate, not a measurement."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must lie in (0, 1], got {utilisation!r}")
    if not peak > 0 or not total_flops >= 0:
        raise ValueError(f"peak must be > 0 and total_flops >= 0, got peak={peak!r}, total_flops={total_flops!r}")
    return total_flops / (peak * utilisation) / 3600


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


def train_recipe(name: str, out_dir: Path | str = DATA_DIR, progress: bool = True, update_manifest: bool = True,
                 data_root=None, device="cpu", settings: dict | None = None, source_dir: Path | str | None = None) -> Path:
    """Train the model of recipe ``name`` from scratch; write ``out_dir/NAME.pt`` (and the manifest).

    Training is seeded (network initialisation and every draw of the loop) and runs with the
    recipe's thread count, so it is reproducible on the same machine; across machines the
    floating-point order of operations may differ. Works for score models (:class:`Recipe`) and
    classifiers (:class:`ClassifierRecipe`; a student needs its target and teacher in ``out_dir``,
    in ``source_dir`` or in the committed ``data/``). Returns the checkpoint's path.

    Parameters
    ----------
    data_root : the local CIFAR-10 copy, for a CIFAR-10 recipe
    device : where to train (``"cuda"`` for the CIFAR-10 recipes)
    settings : dict, optional; replaces some of the recipe's settings (:func:`with_settings`); the
        manifest records the recipe as trained, which :func:`recipe_of` reads back
    """
    recipe = with_settings(_get(name), settings)
    if Path(out_dir).resolve() == DATA_DIR and settings and update_manifest:
        raise ValueError("settings change a recipe: write the model to another folder (out_dir), not the "
                         "committed data/, whose manifest must match RECIPES")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        start = time.perf_counter()
        if isinstance(recipe, ClassifierRecipe):
            net, extra = _train_classifier_recipe(recipe, out_dir, progress, data_root, device, source_dir)
        else:
            net, extra = _train_score_recipe(recipe, progress, data_root, device)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.pt"
    torch.save({"config": net.config, "state_dict": net.state_dict(), **extra}, path)
    if update_manifest:
        command = f"python -m mempkg train {name}"
        if out_dir.resolve() != DATA_DIR:
            command += f" --out {out_dir}" + (f" --data-root {data_root}" if data_root else "")
            command += f" --device {device}" if str(device) != "cpu" else ""
            command += "".join(f" --set {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                               for k, v in (settings or {}).items())
        write_entry(out_dir, name, path, recipe.to_dict(), seconds, sum(p.numel() for p in net.parameters()),
                    command=command, device=str(device))
    return path


def _train_score_recipe(recipe: Recipe, progress: bool, data_root=None, device="cpu"):
    train_data = data_module.training_set(recipe.data, data_root=data_root).to(device)   # a missing copy fails first
    torch.manual_seed(recipe.init_seed)
    net = build_net(recipe.net).to(device)
    labels = data_module.training_labels(recipe.data, data_root=data_root) if recipe.net.get("n_classes") else None
    with tempfile.TemporaryDirectory() as tmp:
        train_score_model(net, train_data, VPSDE(), recipe.train, checkpoint=Path(tmp) / "resume.ckpt",
                          progress=progress, labels=labels)
    return net.cpu(), {"parameterization": recipe.train.parameterization}


def _where(name: str, *folders) -> Path:
    """The first folder holding ``NAME.pt`` (the committed ``data/`` last)."""
    for folder in folders:
        if folder is not None and (Path(folder) / f"{name}.pt").exists():
            return Path(folder)
    return DATA_DIR


def _train_classifier_recipe(recipe: ClassifierRecipe, out_dir: Path, progress: bool, data_root=None, device="cpu",
                             source_dir=None):
    torch.manual_seed(recipe.seed)
    net = build_net(recipe.net).to(device)
    target_dir = _where(recipe.target, out_dir, source_dir)
    spec = recipe_of(recipe.target, target_dir).data
    if recipe.kind == "teacher":
        x = data_module.training_set(spec, distinct=True, data_root=data_root).to(device)
        labels = data_module.training_labels(spec, data_root=data_root).to(device)
        train_classifier(net, x, labels, n_steps=recipe.n_steps, batch_size=recipe.batch_size, lr=recipe.lr,
                         seed=recipe.seed, progress=progress)
        return net.cpu(), {}
    teacher = load_classifier(recipe.teacher, data_dir=_where(recipe.teacher, out_dir, source_dir), device=device)
    synthetic = _draw_synthetic(recipe, target_dir, device)
    tdkd(net, teacher, synthetic, VPSDE(), n_steps=recipe.n_steps, batch_size=recipe.batch_size, lr=recipe.lr,
         seed=recipe.seed, progress=progress)
    return net.cpu(), {"synthetic": synthetic.cpu()}


def _draw_synthetic(recipe: ClassifierRecipe, target_dir, device) -> torch.Tensor:
    """A student's synthetic set: ``n_synthetic`` samples of its target by the recipe's sampler and seed."""
    score = load_model(recipe.target, data_dir=target_dir, device=device)
    return sample_ode(score, (recipe.n_synthetic, *score.data_shape), VPSDE(), n_steps=recipe.sample_steps,
                      generator=torch.Generator().manual_seed(recipe.seed), device=device)


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


def _state(name: str, retrain: bool, device, data_dir, data_root=None):
    if retrain:
        with tempfile.TemporaryDirectory() as tmp:
            path = train_recipe(name, out_dir=tmp, update_manifest=False, data_root=data_root, device=device,
                                source_dir=data_dir)
            return torch.load(path, map_location=device, weights_only=True)
    return verified_state(name, Path(data_dir), device)


def _network(state, device):
    net = build_net(state["config"]).to(device)
    net.load_state_dict(state["state_dict"])
    net.eval()
    return net


def load_model(name: str, retrain: bool = False, device="cpu", data_dir: Path | str | None = None,
               data_root=None) -> NetworkScore:
    """The trained model of recipe ``name`` as a :class:`~mempkg.score.NetworkScore` (VP-SDE).

    Parameters
    ----------
    name : a key of :data:`RECIPES` (a score model)
    retrain : bool
        Train the model from its recipe (minutes) instead of loading the committed checkpoint.
    device : where to put the network
    data_dir : folder of the checkpoints and ``manifest.json`` (default: the committed ``data/``;
        the CIFAR-10 models live wherever ``python -m mempkg train NAME --out DIR`` wrote them)
    data_root : the local CIFAR-10 copy, needed to retrain a CIFAR-10 recipe

    Raises
    ------
    FileNotFoundError when the checkpoint or its manifest entry is missing;
    ChecksumError when the file's sha256 differs from the manifest (a corrupt or replaced file).
    """
    if not isinstance(_get(name), Recipe):
        raise ValueError(f"name must name a score model; {name!r} is a classifier (use load_classifier)")
    state = _state(name, retrain, device, DATA_DIR if data_dir is None else data_dir, data_root)
    return NetworkScore(_network(state, device), VPSDE(), state["parameterization"])


def load_classifier(name: str, retrain: bool = False, device="cpu", data_dir: Path | str | None = None,
                    data_root=None):
    """The trained classifier of recipe ``name`` (a :class:`ClassifierRecipe`), in eval mode.

    Verified against the manifest like :func:`load_model`; ``retrain=True`` trains it (and, for a
    student, draws its synthetic set) from the recipe instead.
    """
    if not isinstance(_get(name), ClassifierRecipe):
        raise ValueError(f"name must name a classifier; {name!r} is a score model (use load_model)")
    return _network(_state(name, retrain, device, DATA_DIR if data_dir is None else data_dir, data_root), device)


def synthetic_set(name: str, retrain: bool = False, device="cpu", data_dir: Path | str | None = None) -> torch.Tensor:
    """The synthetic set a TDKD student was distilled on (Eq. 153): samples of its target model.

    Read from the student's checkpoint (sha256-verified); with ``retrain=True`` drawn again from
    the target by the recipe's sampler and seed (what :func:`train_recipe` does).
    """
    recipe = _get(name)
    if not isinstance(recipe, ClassifierRecipe) or recipe.kind != "student":
        raise ValueError(f"name must name a TDKD student recipe, got {name!r}")
    data_dir = DATA_DIR if data_dir is None else Path(data_dir)
    if not retrain:
        return verified_state(name, data_dir, device)["synthetic"]
    return _draw_synthetic(recipe_of(name, data_dir), data_dir, device)
