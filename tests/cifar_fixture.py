"""A tiny CIFAR-10 copy and tiny CIFAR-10 models, written by the tests (nothing is downloaded).

``write_tiny_cifar(folder)`` writes the "python version" layout (``data_batch_1..5``,
``test_batch``) with random pixels and balanced labels; ``train_tiny_models(data_root, out)``
trains every CIFAR-10 recipe the chapters load, with :data:`TINY` settings (a U-Net of a few
thousand parameters, a few steps), into ``out`` with its manifest, the way a user trains the real
ones with ``python -m mempkg train NAME --out DIR --data-root ROOT --device cuda``.

Run as a script to prepare both for trying a chapter by hand:
``python tests/cifar_fixture.py /tmp/tinycifar`` then
``python -m mempkg run 5 -p dataset cifar10 -p data_root /tmp/tinycifar -p checkpoint_dir /tmp/tinycifar/models ...``.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np

from mempkg import checkpoints

_UNET = {"net.base": 8, "net.channel_mult": [1, 2], "net.n_res_blocks": 1, "net.groups": 4, "net.time_dim": 16,
         "n_steps": 3, "batch_size": 16}
_CLASSIFIER = {"net.width": 8, "net.n_blocks": 1, "n_steps": 3, "batch_size": 16}

#: Settings that make each CIFAR-10 recipe train in seconds on a CPU (its data shrunk to fit the tiny copy).
TINY = {
    "cifar10_64_x0": {**_UNET, "data.n": 16},
    "cifar10_32_eps": {**_UNET, "data.n": 8},
    "cifar10_1000_x0": {**_UNET, "data.n": 40},
    "cifar10_rare3_x0": {**_UNET, "data.n_per_class": 10, "data.n_rare": 3},
    "cifar10_1000_side": {**_UNET, "data.n": 60},
    "cifar10_1000_side_teacher": dict(_CLASSIFIER),
    "cifar10_1000_side_student": {**_CLASSIFIER, "n_synthetic": 64, "sample_steps": 3},
    "cifar10_300_x0": {**_UNET, "data.n": 10},
    "cifar10_3000_x0": {**_UNET, "data.n": 30},
    "cifar10_30000_x0": {**_UNET, "data.n": 120},
}


def write_tiny_cifar(folder, per_batch: int = 60, seed: int = 0) -> Path:
    """CIFAR-10's python layout in ``folder/cifar-10-batches-py`` with ``5 per_batch`` training images."""
    folder = Path(folder) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(i) % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder.parent


def train_tiny_models(data_root, out) -> Path:
    """Train every recipe of :data:`TINY` into ``out`` (teachers before students); returns ``out``."""
    out = Path(out)
    for name, settings in TINY.items():
        checkpoints.train_recipe(name, out_dir=out, progress=False, data_root=data_root, settings=settings)
    return out


if __name__ == "__main__":
    root = write_tiny_cifar(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tinycifar")
    print(train_tiny_models(root, root / "models"))
