"""Nearest neighbours against brute force."""
import pytest
import torch

from mempkg.metrics import nearest_neighbors


def test_nearest_neighbors_match_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 1, 3, 3, generator=g)
    x = torch.randn(20, 1, 3, 3, generator=g)
    d, i = nearest_neighbors(x, train, k=3, chunk_size=7)
    full = ((x.flatten(1)[:, None] - train.flatten(1)[None]) ** 2).sum(-1).sqrt()
    ref_d, ref_i = full.topk(3, largest=False)
    assert torch.equal(i, ref_i) and torch.allclose(d, ref_d, atol=1e-6)


def test_exclude_self_skips_the_zero_distance():
    train = torch.tensor([[0.0], [1.0], [3.0]])
    d, i = nearest_neighbors(train, train, exclude_self=True)
    assert i[:, 0].tolist() == [1, 0, 1] and d[:, 0].tolist() == [1.0, 1.0, 2.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be at most"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 2), k=4)
    with pytest.raises(ValueError, match="data shape"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 2), k=0)
