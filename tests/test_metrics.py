"""Nearest neighbours against brute force."""
import numpy as np
import pytest
import torch

from mempkg.metrics import memorized_indices, nearest_neighbors, normalized_l2


def test_nearest_neighbors_match_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 1, 3, 3, generator=g)
    x = torch.randn(20, 1, 3, 3, generator=g)
    d, i = nearest_neighbors(x, train, n_neighbors=3, chunk_size=7)
    full = ((x.flatten(1)[:, None] - train.flatten(1)[None]) ** 2).sum(-1).sqrt()
    ref_d, ref_i = full.topk(3, largest=False)
    assert torch.equal(i, ref_i) and torch.allclose(d, ref_d, atol=1e-6)


def test_exclude_self_skips_the_zero_distance():
    train = torch.tensor([[0.0], [1.0], [3.0]])
    d, i = nearest_neighbors(train, train, exclude_self=True)
    assert i[:, 0].tolist() == [1, 0, 1] and d[:, 0].tolist() == [1.0, 1.0, 2.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_neighbors must be at most"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 2), n_neighbors=4)
    with pytest.raises(ValueError, match="data shape"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="n_neighbors must be"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(3, 2), n_neighbors=0)


def test_normalized_l2_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(80, 5, generator=g)
    gen = torch.cat([train[:3] + 1e-3, torch.randn(4, 5, generator=g)])
    ratio, nearest = normalized_l2(gen, train, mean_scale=0.5, n_neighbors=10)
    d = torch.cdist(gen, train, compute_mode="donot_use_mm_for_euclid_dist")
    ds, _ = d.sort(dim=1)
    assert torch.allclose(ratio, ds[:, 0] / (0.5 * ds[:, :10].mean(1)), rtol=1e-5)
    assert nearest[:3].tolist() == [0, 1, 2]
    assert (ratio[:3] < 0.01).all() and (ratio[3:] > 0.3).all()
    assert (ratio <= 2.0 + 1e-6).all()       # at most 1 / alpha


def test_memorized_indices_thresholds_the_ratio():
    train = torch.eye(60)
    gen = torch.stack([train[5], train[5] * 0.999, train[7], 0.5 * (train[1] + train[2])])
    idx, counts = memorized_indices(gen, train, threshold=1 / 3, n_neighbors=20, return_counts=True)
    assert idx.tolist() == [5, 7] and counts.tolist() == [2, 1]
    with pytest.raises(ValueError, match="n_neighbors"):
        normalized_l2(gen, train, n_neighbors=61)
    with pytest.raises(ValueError, match="threshold"):
        memorized_indices(gen, train, threshold=0)


def test_png_complexity_ranks_flat_images_below_noisy_ones():
    from mempkg.metrics import png_complexity

    flat = -torch.ones(2, 1, 8, 8)
    noisy = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    lengths = png_complexity(torch.cat([flat, noisy]))
    assert lengths.dtype == torch.long and (lengths[:2] < lengths[2:]).all()
    assert png_complexity(rgb).item() > png_complexity(torch.zeros(1, 3, 16, 16)).item()
    with pytest.raises(ValueError, match="images must have shape"):
        png_complexity(torch.zeros(2, 8, 8))


def test_auc_is_the_mann_whitney_probability():
    from mempkg.metrics import auc

    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auc([1.0], [1.0]) == 0.5                      # ties count one half
    assert auc([1.0, 3.0], [2.0]) == 0.5
    from scipy.stats import mannwhitneyu
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, generator=g) + 0.5, torch.randn(30, generator=g)
    assert abs(auc(a, b) - mannwhitneyu(a.numpy(), b.numpy()).statistic / (40 * 30)) < 1e-12
    with pytest.raises(ValueError, match="at least one"):
        auc([], [1.0])


def test_auc_equals_scikit_learns_roc_auc_score_with_ties():
    from sklearn.metrics import roc_auc_score

    from mempkg.metrics import auc

    rng = np.random.default_rng(1)
    for n_pos, n_neg in ((1, 7), (50, 80), (500, 300)):
        pos, neg = rng.normal(0.3, 1, n_pos).round(1), rng.normal(0, 1, n_neg).round(1)  # many ties
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        assert auc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)
        pairwise = ((pos[:, None] > neg) + 0.5 * (pos[:, None] == neg)).mean()
        assert auc(torch.as_tensor(pos), torch.as_tensor(neg)) == pytest.approx(pairwise, abs=1e-12)


def test_auc_of_50000_against_50000_scores_needs_no_pairwise_matrix():
    """The pairwise comparison held 2.5e9 pairs (20 GB in float64); ranks need O(n)."""
    from mempkg.metrics import auc

    g = torch.Generator().manual_seed(0)
    value = auc(torch.randn(50_000, generator=g) + 1, torch.randn(50_000, generator=g))
    assert 0.7 < value < 0.8                      # Phi(1 / sqrt 2) = 0.760


def test_nan_scores_raise_naming_the_argument():
    from mempkg.metrics import auc, auc_interval

    with pytest.raises(ValueError, match="positive"):
        auc([1.0, float("nan")], [0.0])
    with pytest.raises(ValueError, match="negative"):
        auc([1.0], [float("nan")])
    with pytest.raises(ValueError, match="scores"):
        auc_interval([1.0, float("nan"), 0.0], [True, False, False])


def test_ams_and_ums_by_hand():
    from mempkg.metrics import ams_ums

    gamma = torch.tensor([0.1, 0.2, 0.3, 0.45, 0.9, 2.0])
    nearest = torch.tensor([4, 4, 7, 1, 2, 3])
    assert ams_ums(gamma, nearest, 0.0, 1 / 3) == (3 / 6, 2 / 6)          # images 4 and 7
    assert ams_ums(gamma, nearest, 1 / 3, 0.5) == (1 / 6, 1 / 6)
    assert ams_ums(gamma, nearest, 0.3, 0.45) == (1 / 6, 1 / 6), "half-open: 0.45 is not in [0.3, 0.45)"
    g2 = torch.tensor([[0.1, 0.2], [0.9, 0.25]])
    n2 = torch.tensor([[4, 5], [1, 6]])
    assert ams_ums(g2, n2, 0.0, 0.3, all_matches=True) == (0.5, 3 / 2), "the literal Eq. 15 can exceed AMS"
    with pytest.raises(ValueError, match="low must be at most high"):
        ams_ums(gamma, nearest, 0.5, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        ams_ums(gamma, nearest[:3], 0.0, 1.0)


def test_expected_unique_matches_multinomial_monte_carlo():
    """Eq. 150 and its variance against R = 400 multinomial replicates (mean within 3 SE, variance within 20%)."""
    from mempkg.metrics import expected_unique

    m = 200
    zipf = 1.0 / torch.arange(1, m + 1, dtype=torch.float64) ** 1.1
    p = 0.05 * zipf / zipf.sum()
    g = torch.Generator().manual_seed(0)
    for n_gen in (30, 300, 3000):
        mean, var = expected_unique(p, n_gen, return_variance=True)
        probs = torch.cat([p, (1 - p.sum()).reshape(1)])
        draws = torch.stack([torch.bincount(torch.multinomial(probs, n_gen, replacement=True, generator=g),
                                            minlength=m + 1)[:m] for _ in range(400)])
        uniques = (draws > 0).sum(1).double()
        assert abs(uniques.mean() - mean) < 3 * uniques.std() / 20
        assert abs(uniques.var() / var - 1) < 0.2
    assert torch.allclose(expected_unique(p, torch.tensor([1, 2])), torch.stack([p.sum(), (1 - (1 - p) ** 2).sum()]))
    with pytest.raises(ValueError, match="probabilities"):
        expected_unique(torch.tensor([0.7, 0.6]), 10)


def test_calibrated_bands_put_the_stated_share_of_held_out_images_in_the_low_band():
    from mempkg.metrics import ams_ums, calibrate_bands

    held = torch.linspace(0.5, 2.5, 2001)                 # never-seen images: none closer than l = 0.5
    bands = calibrate_bands(held, 0.01)
    assert bands["high"] == (0.0, 1 / 3) and bands["mid"] == (1 / 3, 0.5)
    ams, _ = ams_ums(held, torch.arange(2001), *bands["low"])
    assert abs(ams - 0.01) < 0.002, "a memorize-nothing set scores the false-positive rate in the low band"
    with pytest.raises(ValueError, match="false_positive_rate"):
        calibrate_bands(held, 1.5)


def test_auc_interval_matches_the_pairwise_auc_and_covers_it():
    from mempkg.metrics import auc, auc_interval

    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 300)].round(1)      # rounding makes ties
    labels = np.r_[np.ones(30), np.zeros(300)].astype(bool)
    value, low, high = auc_interval(scores, labels, n_boot=500)
    assert value == pytest.approx(auc(scores[labels], scores[~labels]), abs=1e-12)
    pos, neg = scores[labels], scores[~labels]
    assert value == pytest.approx(((pos[:, None] > neg) + 0.5 * (pos[:, None] == neg)).mean(), abs=1e-12)
    assert low < value < high and high - low < 0.25
    assert auc_interval(np.r_[2.0, 3.0, 0.0, 1.0], [True, True, False, False], n_boot=50) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        auc_interval([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="level"):
        auc_interval([1.0, 2.0], [True, False], level=1.5)


def test_image_complexity_closed_forms_on_a_flat_image_and_a_checkerboard():
    """Flat: total variation 0, one level, no high-frequency DCT energy. A +-1 checkerboard on
    4x4: 2 x 12 neighbouring pairs differing by 2 (total variation 48), two levels, all of its
    DCT energy at the highest frequency (3, 3)."""
    from mempkg.metrics import image_complexity, png_complexity

    flat = torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64)
    board = ((torch.arange(4)[:, None] + torch.arange(4)) % 2 * 2 - 1.0).double()[None, None]
    images = torch.cat([flat, board])
    assert torch.allclose(image_complexity(images, "tv"), torch.tensor([0.0, 48.0], dtype=torch.float64))
    assert image_complexity(images, "levels").tolist() == [1.0, 2.0]
    assert torch.allclose(image_complexity(images, "dct"), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(image_complexity(images, "png"), png_complexity(images))
    # total variation adds over channels and is the default measure
    rgb = board.repeat(1, 3, 1, 1)
    assert image_complexity(rgb).item() == pytest.approx(3 * 48.0)


def test_image_complexity_does_not_saturate_where_png_does():
    """8x8 noise-like images: PNG stores them all at one length, total variation ranks them."""
    from mempkg.metrics import image_complexity, png_complexity

    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert png_complexity(x).unique().numel() <= 2
    assert image_complexity(x, "tv").unique().numel() == 50


def test_image_complexity_bad_arguments():
    from mempkg.metrics import image_complexity

    with pytest.raises(ValueError, match="measure"):
        image_complexity(torch.zeros(1, 1, 4, 4), "jpeg")
    with pytest.raises(ValueError, match="images"):
        image_complexity(torch.zeros(4, 4))


def test_spearman_interval_matches_scipy_and_covers_it():
    from scipy import stats

    from mempkg.metrics import spearman_interval

    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    b = a + rng.normal(size=300)
    rho, low, high = spearman_interval(a, b, n_boot=200)
    assert rho == pytest.approx(stats.spearmanr(a, b).statistic)
    assert low < rho < high and high - low < 0.2
    assert spearman_interval(torch.as_tensor(a), torch.as_tensor(b), n_boot=200) == (rho, low, high)
    assert all(np.isnan(spearman_interval(a, np.ones(300))))
    with pytest.raises(ValueError, match="paired"):
        spearman_interval(a, b[:10])
    with pytest.raises(ValueError, match="n_boot"):
        spearman_interval(a, b, n_boot=0)
    with pytest.raises(ValueError, match="NaN"):
        spearman_interval(np.r_[a[:-1], np.nan], b)


def test_mean_interval_covers_the_true_mean_at_its_level():
    from mempkg.metrics import mean_interval

    rng = np.random.default_rng(1)
    covered = 0
    for rep in range(100):
        x = rng.normal(2.0, 1.0, size=80)
        mean, low, high = mean_interval(x, n_boot=300, seed=rep)
        assert mean == pytest.approx(x.mean())
        # the percentile interval is close to the normal one, mean +- 1.96 s / sqrt(n)
        assert high - low == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(80), rel=0.25)
        covered += low <= 2.0 <= high
    assert 85 <= covered <= 100  # 95 % nominal; binomial(100, 0.95) lies above 85 w.p. > 0.999
    assert np.isnan(mean_interval([3.0])[1]) and mean_interval([3.0])[0] == 3.0
    assert all(np.isnan(mean_interval([])))
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([1.0, np.nan])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=1.5)


def test_auc_interval_of_takes_the_arguments_of_auc():
    from mempkg.metrics import auc, auc_interval, auc_interval_of

    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 60)
    labels = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    out = auc_interval_of(torch.as_tensor(pos), neg, n_boot=200, seed=3)
    assert out == auc_interval(np.r_[pos, neg], labels, n_boot=200, seed=3)
    assert out[0] == pytest.approx(auc(pos, neg))
    with pytest.raises(ValueError, match="positive"):
        auc_interval_of([np.nan, 1.0], neg)
