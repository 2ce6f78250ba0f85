"""Data sets: shapes, ranges, seeds, errors, and CIFAR-10 from a tiny copy written here."""
import pickle

import numpy as np
import pytest
import torch

from mempkg import VPSDE, data


def test_digits_shape_range_and_labels():
    x, y = data.digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert y.shape == (1797,) and set(y.tolist()) == set(range(10))


def test_digits_subset_is_seeded_and_respects_classes():
    a = data.digits(50, seed=3)
    assert torch.equal(a, data.digits(50, seed=3))
    assert not torch.equal(a, data.digits(50, seed=4))
    _, y = data.digits(30, classes=[3, 7], return_labels=True)
    assert set(y.tolist()) <= {3, 7}


def test_flip_appends_mirror_images():
    x = data.digits(5, flip=True, dtype=torch.float64)
    assert x.shape[0] == 10
    assert torch.equal(x[5:], torch.flip(x[:5], dims=[-1]))


def test_load_dispatches_and_rejects_unknown_names():
    assert data.load("digits", n=3).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load("mnist")


@pytest.mark.parametrize("kwargs,name", [(dict(n=-1), "n must"), (dict(n=5000), "n must be at most"),
                                         (dict(classes=[11]), "classes"), (dict(n=2.5), "n must be an integer")])
def test_digits_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        data.digits(**kwargs)


def write_tiny_cifar(folder, per_batch=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, size=per_batch).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


def test_cifar10_reads_the_python_format(tmp_path):
    folder = write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    x, y = data.cifar10(tmp_path, return_labels=True)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    with open(folder / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"][0].reshape(3, 32, 32)
    assert torch.allclose(x[0], torch.as_tensor(raw / 127.5 - 1.0, dtype=torch.float32))
    assert data.cifar10(folder, train=False).shape == (4, 3, 32, 32)      # the folder itself works too
    assert data.load("cifar10", n=6, data_root=tmp_path, flip=True).shape == (12, 3, 32, 32)


def test_cifar10_missing_copy_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        data.cifar10(tmp_path)
    with pytest.raises(ValueError, match="data_root"):
        data.load("cifar10")


def test_split_is_disjoint_and_seeded():
    x = torch.arange(20.0)[:, None]
    a, b = data.split(x, 12, seed=1)
    assert len(a) == 12 and len(b) == 8
    assert set(a[:, 0].tolist()).isdisjoint(b[:, 0].tolist())
    assert torch.equal(a, data.split(x, 12, seed=1)[0])
    with pytest.raises(ValueError, match="n_test"):
        data.split(x, 12, n_test=9)


def test_random_points_and_subspace_gaussian():
    p = data.random_points(5, dim=3, min_separation=0.4, seed=0)
    assert p.shape == (5, 3) and (p.norm(dim=1) <= 1).all()
    d = torch.cdist(p, p) + torch.eye(5) * 10
    assert d.min().item() >= 0.4
    x, basis = data.subspace_gaussian(100, 6, 2, seed=0)
    assert x.shape == (100, 6) and basis.shape == (6, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=basis.dtype), atol=1e-12)
    assert torch.linalg.matrix_rank(x).item() == 2
    with pytest.raises(ValueError, match="k must be at most"):
        data.subspace_gaussian(10, 3, 4)


def test_von_mises_mixture_puts_points_on_the_circle_and_at_the_origin():
    x, lid = data.von_mises_mixture(500, kappa=3.0, origin_weight=0.3, isolated=3.0, seed=1, return_labels=True)
    r = x.norm(dim=1)
    assert torch.allclose(r[lid == 1], torch.ones(int((lid == 1).sum())), atol=1e-6)
    assert (r[lid == 0] == 0).all() and 0.2 < (lid == 0).float().mean() < 0.4
    last = int((lid == 1).nonzero().max())
    assert torch.allclose(x[last], torch.tensor([torch.cos(torch.tensor(3.0)), torch.sin(torch.tensor(3.0))]), atol=1e-6)
    assert torch.equal(x, data.load("von_mises_mixture", n=500, kappa=3.0, origin_weight=0.3, isolated=3.0, seed=1))
    with pytest.raises(ValueError, match="origin_weight"):
        data.von_mises_mixture(10, origin_weight=1.0)


def test_data_and_sde_accept_valid_edge_values():
    x = data.von_mises_mixture(50, kappa=0.0, origin_weight=0.0, seed=0)
    assert torch.allclose(x.norm(dim=1), torch.ones(50), atol=1e-6)
    assert VPSDE(np.float32(0.1), np.float64(20.0)).beta_max == 20.0


def test_a_recipe_builds_its_training_set_duplicates_and_held_out_images():
    spec = data.DataRecipe("digits", dict(n=8, seed=0), data.Duplication(n=2, times=3, seed=0))
    assert data.training_set(spec).shape == (12, 1, 8, 8)              # 8 + 2 x 2 extra copies
    dup = data.duplicated_indices(spec)
    assert dup.shape == (2,)
    full = data.training_set(spec)
    assert torch.equal(full[8:10], full[dup]) and torch.equal(full[10:12], full[dup])
    assert spec.n == 8 and spec.to_dict() == dict(name="digits", n=8, seed=0, duplicate=dict(n=2, times=3, seed=0))
    flipped = data.DataRecipe("digits", dict(n=16, seed=0, flip=True))
    held = data.held_out(flipped, n=30, seed=1)
    assert held.shape == (60, 1, 8, 8)
    seen = data.training_set(flipped)
    assert not (held.flatten(1)[:, None] == seen.flatten(1)[None]).all(2).any()
    with pytest.raises(ValueError, match="name must be one of"):
        data.DataRecipe("mnist")

