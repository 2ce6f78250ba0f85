"""Every measure per training image (mempkg.audit) on exact models whose memorized set is known."""

import numpy as np
import pytest
import torch

from mempkg import EmpiricalScore, GaussianScore, MixtureScore, VPSDE, audit
from mempkg.metrics import auc
from mempkg.score import score_jvp


@pytest.fixture(scope="module")
def known():
    """Gaussian data; the model is 0.8 N(0, I) + 0.2 Emp(S) with S the first 8 of 48 training points."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    train = torch.randn(48, 1, 2, 4, generator=g, dtype=torch.float64)
    smooth = GaussianScore(torch.zeros(1, 2, 4, dtype=torch.float64), torch.eye(8, dtype=torch.float64), sde)
    model = MixtureScore([smooth, EmpiricalScore(train[:8], sde)], [0.8, 0.2])
    memorized = torch.zeros(48, dtype=torch.bool)
    memorized[:8] = True
    table, cost = audit.measure_table(model, train, sde, n_generate=400, n_sample_steps=40, n_axes=4,
                                      n_steps=40, n_neighbors=40, chunk_size=20)
    return table, cost, memorized


def oriented_auc(table, name, memorized):
    v = torch.tensor(table[name].to_numpy())
    sign = 1.0 if audit.MEASURES[name].memorized == "high" else -1.0
    return auc(sign * v[memorized], sign * v[~memorized])


def test_one_row_per_image_one_column_per_measure(known):
    table, cost, _ = known
    assert table.shape == (48, len(audit.DEFAULT_MEASURES))
    assert list(table.columns) == list(audit.DEFAULT_MEASURES)
    assert np.isfinite(table.to_numpy()).all()
    assert set(cost.index) == {"generations", *audit.DEFAULT_MEASURES}
    assert (cost.loc[list(audit.DEFAULT_MEASURES), "memorized"].isin(["high", "low"])).all()


@pytest.mark.parametrize("name", ["flipd", "copies", "nearest_generation", "volume_growth_cheap", "volume_growth_step",
                                  "cosine"])
def test_measures_find_the_known_memorized_points(known, name):
    table, _, memorized = known
    assert oriented_auc(table, name, memorized) > 0.9


def test_copies_concentrate_on_memorized_points_and_flipd_is_zero_there(known):
    table, _, memorized = known
    m = memorized.numpy()
    # each point of S is generated with probability 0.2 / 8: about 10 of 400 generations copy it;
    # in 8 dimensions the smooth part also lands within l < 1/3 of a training point now and then
    assert table["copies"][m].mean() > 5 * table["copies"][~m].mean()
    # at a memorized point the model is a point mass at small t0: FLIPD -> 0 (seed 004, Eq. 6)
    assert table["flipd"][memorized.numpy()].abs().max() < 0.5


def test_costs_count_score_evaluations(known):
    _, cost, _ = known
    # generations: 40 Heun steps of 400 points (2 evaluations each but the last) plus the denoising
    assert cost.loc["generations", "score_evaluations"] >= 40 * 400
    assert cost.loc["flipd", "score_evaluations"] >= 48
    assert cost.loc["volume_growth_step", "score_evaluations"] >= 48 * 8    # d tangents per image
    assert cost.loc["distance_to_mean", "score_evaluations"] == 0


def test_counting_score_counts_rows_and_forwards_attributes():
    sde = VPSDE()
    base = EmpiricalScore(torch.zeros(3, 2, dtype=torch.float64), sde)
    counting = audit.CountingScore(base)
    counting(torch.zeros(5, 2, dtype=torch.float64), 0.5)
    score_jvp(counting, torch.zeros(4, 2, dtype=torch.float64), 0.5, torch.ones(4, 3, 2, dtype=torch.float64))
    assert counting.evaluations == 5 + 12 and counting.sde is sde       # 4 points x 3 tangents
    network = audit.CountingScore(lambda x, t: -x * t)                  # autodiff JVPs count the same
    score_jvp(network, torch.zeros(4, 2), 0.5, torch.ones(4, 3, 2))
    assert network.evaluations >= 12
    assert not hasattr(audit.CountingScore(lambda x, t: x), "jvp")


def test_ranks_put_the_most_memorized_first(known):
    table, _, memorized = known
    ranks = audit.memorization_ranks(table)
    assert ranks["copies"][memorized.numpy()].mean() < ranks["copies"][~memorized.numpy()].mean()
    assert ranks["flipd"].min() == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(measures=["flipd", "volume"]), "unknown measures"),
    (dict(measures=[]), "at least one"),
    (dict(gen=torch.zeros(5, 3, dtype=torch.float64)), "gen has images"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(n_generate=0), "n_generate"),
])
def test_bad_arguments_fail_before_any_work(kwargs, message):
    sde = VPSDE()
    train = torch.randn(6, 2, dtype=torch.float64)
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    with pytest.raises(ValueError, match=message):
        audit.measure_table(score, train, sde, **kwargs)
    assert not calls


def test_fewer_bundle_copies_and_step_axes_are_what_is_counted():
    """n_bundle and step_axes (chapter 13's knobs for large images) set the normal bundle's K and the
    one-step growth's axes; the score evaluations counted follow them."""
    sde = VPSDE()
    train = torch.randn(5, 1, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = GaussianScore(torch.zeros(1, 2, 4, dtype=torch.float64), torch.eye(8, dtype=torch.float64), sde)
    measures = ("normal_bundle", "volume_growth_step")
    _, full = audit.measure_table(model, train, sde, measures=measures)
    table, cost = audit.measure_table(model, train, sde, measures=measures, n_bundle=6, step_axes=3)
    assert full.loc["normal_bundle", "score_evaluations"] == 5 * 4 * 8
    assert cost.loc["normal_bundle", "score_evaluations"] == 5 * 6
    assert cost.loc["volume_growth_step", "score_evaluations"] < full.loc["volume_growth_step", "score_evaluations"]
    assert np.isfinite(table.to_numpy()).all()
    with pytest.raises(ValueError, match="n_bundle"):
        audit.measure_table(model, train, sde, measures=measures, n_bundle=0)
