"""Chen et al.'s Section 3 (mempkg.pointwise) against closed forms and Monte Carlo."""

import math

import numpy as np
import pytest
import torch

from mempkg import pointwise as pw
from mempkg.metrics import expected_unique, sample_unique_counts


def gaussian(d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = scale * (a @ a.T + 0.2 * torch.eye(d, dtype=torch.float64))
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    return mean, cov


def points(n, d, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 8, 64])
@pytest.mark.parametrize("eps", [1e-2, 1e-1, 1.0])
def test_identity_holds_for_a_gaussian_in_closed_form_and_by_monte_carlo(d, eps):
    mean, cov = gaussian(d)
    x = points(50, d)
    closed = pw.m_point(mean, cov, x, eps)
    identity = pw.m_point_identity(pw.gaussian_entropy(cov), pw.m_semantic(mean, cov, x), 50, d, eps)
    assert float(closed) == pytest.approx(float(identity), rel=1e-10)
    dist = torch.distributions.MultivariateNormal(mean, cov)
    samples = dist.sample((100_000,))
    est, se = pw.m_point_mc(samples, dist.log_prob(samples), x, eps)
    assert abs(float(est - closed)) < 4 * float(se)


@pytest.mark.parametrize("d", [2, 8])
def test_identity_holds_for_a_mixture(d):
    """Not Gaussian: entropy by Monte Carlo on one sample, M_point on another, M_sem from moments."""
    g = torch.Generator().manual_seed(3)
    centers, var, eps = points(5, d, seed=4, scale=2.0), 0.3, 0.1
    x = points(50, d, seed=5)

    def draw(n):
        which = torch.randint(5, (n,), generator=g)
        return centers[which] + math.sqrt(var) * torch.randn(n, d, generator=g, dtype=torch.float64)

    a, b = draw(100_000), draw(100_000)
    log_a = pw.mixture_log_prob(a, centers, var)
    entropy, se_h = -log_a.mean(), log_a.std() / math.sqrt(len(a))
    mean = centers.mean(0)
    cov = var * torch.eye(d, dtype=torch.float64) + (centers - mean).T @ (centers - mean) / 5
    identity = pw.m_point_identity(entropy, pw.m_semantic(mean, cov, x), 50, d, eps)
    est, se = pw.m_point_mc(b, pw.mixture_log_prob(b, centers, var), x, eps)
    assert abs(float(est - identity)) < 4 * math.hypot(float(se), 50 * float(se_h))


def test_gaussian_kl_matches_monte_carlo_and_the_isotropic_form():
    mean_p, cov_p = gaussian(4, seed=0)
    mean_q, cov_q = gaussian(4, seed=7)
    p = torch.distributions.MultivariateNormal(mean_p, cov_p)
    q = torch.distributions.MultivariateNormal(mean_q, cov_q)
    s = p.sample((200_000,))
    values = p.log_prob(s) - q.log_prob(s)
    kl = pw.gaussian_kl(mean_p, cov_p, mean_q, cov_q)
    assert abs(float(kl - values.mean())) < 4 * float(values.std()) / math.sqrt(len(s))
    assert float(kl) == pytest.approx(float(torch.distributions.kl_divergence(p, q)), rel=1e-10)
    x, eps = points(6, 4), 0.05
    iso = pw.gaussian_kl(mean_p, cov_p, x, eps * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(iso, pw.point_kl(mean_p, cov_p, x, eps), rtol=1e-10)


def test_theorem1_slopes_along_two_paths_and_the_paper_value():
    d, eps, s, h = 8, 0.05, 0.4, 1e-6
    x = points(50, d)
    cov = s * torch.eye(d, dtype=torch.float64)
    mean = torch.zeros(d, dtype=torch.float64)
    shift = torch.full((d,), 0.3, dtype=torch.float64)

    def along(f):
        return (f(h)[0] - f(-h)[0]) / (f(h)[1] - f(-h)[1])

    def mean_path(u):
        m = mean + (1 + u) * shift
        return pw.m_point(m, cov, x, eps), pw.m_semantic(m, cov, x)

    def scale_path(u):
        c = (s + u) * torch.eye(d, dtype=torch.float64)
        return pw.m_point(mean, c, x, eps), pw.m_semantic(mean, c, x)

    assert float(along(mean_path)) == pytest.approx(1 / (2 * eps), rel=1e-6)
    assert float(along(scale_path)) == pytest.approx(1 / (2 * eps) - 1 / (2 * s), rel=1e-6)
    paper = float(pw.theorem1_paper_slope(cov, eps))
    assert paper == pytest.approx(1 / (2 * eps) + d / (2 * s))
    assert abs(paper - float(along(scale_path))) > d / (2 * s)


def test_proposition1_eq7_is_an_identity_and_eq8_fails_per_class_in_a_counterexample():
    g = torch.Generator().manual_seed(0)
    wide = 2.0 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    tight = 0.1 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    z, labels = torch.cat([wide, tight]), torch.tensor([0] * 500 + [1] * 500)
    df = pw.label_variance_table(z, labels)
    assert np.allclose(df.eq7_gap, df.parallel_axis, rtol=1e-9, atol=1e-9)
    assert (df.eq7_gap >= -1e-9).all()
    assert df.attrs["within"] + df.attrs["between"] == pytest.approx(df.attrs["trace"], rel=1e-12)
    assert df.loc[0, "trace_ratio"] > 1.8 and df.loc[1, "trace_ratio"] < 0.01
    assert pw.theorem2_limit(z, labels, 0) > 1.3
    assert (df.weight * df.trace_ratio).sum() <= 1          # on average over classes, Eq. 8 holds


def test_random_labels_satisfy_eq7_but_barely_reduce_variance():
    z = points(2000, 5, seed=2)
    labels = torch.randint(10, (2000,), generator=torch.Generator().manual_seed(0))
    df = pw.label_variance_table(z, labels)
    assert np.allclose(df.eq7_gap, df.parallel_axis, rtol=1e-9)
    assert (abs(df.trace_ratio - 1) < 0.15).all()


def test_theorem2_ratio_tends_to_its_limit_and_the_limit_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(200, 3, generator=g, dtype=torch.float64) + 3,
                   0.5 * torch.randn(300, 3, generator=g, dtype=torch.float64)])
    labels = torch.tensor([0] * 200 + [1] * 300)
    for c in (0, 1):
        r0 = pw.theorem2_limit(z, labels, c)
        assert float(pw.theorem2_ratio(z, labels, c, 1e-9)) == pytest.approx(r0, abs=1e-3)
        df = pw.label_variance_table(z, labels)
        closed = 2 * df.loc[c, "trace_c"] / (df.loc[c, "trace_c"] + df.attrs["trace"] + df.loc[c, "shift"])
        assert r0 == pytest.approx(closed, rel=1e-10)
    eps = torch.logspace(-6, 1, 8)
    assert pw.theorem2_ratio(z, labels, 0, eps, jitter=1e-3).shape == (8,)
    assert pw.theorem2_limit(z, labels, 0, as_printed=True) != pytest.approx(pw.theorem2_limit(z, labels, 0))


def test_a_sharper_copier_reads_as_less_memorization():
    """M_point of the blurred copier is smallest at blur = eps and grows as the copy sharpens."""
    x = points(40, 16, seed=3, scale=3.0)
    eps, blurs = 1e-2, torch.logspace(-4, 0, 17).tolist()
    g = torch.Generator().manual_seed(0)
    values = [float(pw.blurred_copier_m_point(x, b, eps, n_samples=4000, generator=g)[0]) for b in blurs]
    best = blurs[int(np.argmin(values))]
    assert eps / 2 <= best <= 2 * eps
    assert values[0] > values[int(np.argmin(values))] + 1000


def test_unique_counts_by_monte_carlo_match_eq150_mean_and_variance():
    p = 1 / np.arange(1, 1001) ** 1.1
    p = 0.05 * p / p.sum()
    n_gen = np.array([10, 100, 1000, 10_000])
    counts = sample_unique_counts(p, n_gen, n_replicates=2000, seed=0).astype(float)
    mean, var = expected_unique(p, torch.tensor(n_gen, dtype=torch.float64), return_variance=True)
    se = counts.std(1, ddof=1) / math.sqrt(counts.shape[1])
    assert (abs(counts.mean(1) - mean.numpy()) < 4 * se).all()
    dev = (counts - counts.mean(1, keepdims=True)) ** 2
    se_var = dev.std(1, ddof=1) / math.sqrt(counts.shape[1])
    assert (abs(counts.var(1, ddof=1) - var.numpy()) < 4 * se_var).all()
    assert sample_unique_counts(p, 5, n_replicates=3).shape == (3,)


@pytest.mark.parametrize("call, message", [
    (lambda: pw.m_point(torch.zeros(2), torch.eye(2), torch.zeros(3, 2), 0.0), "eps"),
    (lambda: pw.m_point(torch.zeros(2), torch.eye(3), torch.zeros(3, 2), 0.1), "cov"),
    (lambda: pw.m_semantic(torch.zeros(2), torch.eye(2), torch.zeros(3, 4)), "points"),
    (lambda: pw.theorem2_ratio(torch.zeros(4, 2), [0, 0, 1, 1], 5, 0.1), "label"),
    (lambda: pw.theorem2_limit(torch.zeros(4, 2), [0, 0, 1], 0), "labels"),
    (lambda: pw.theorem2_ratio(torch.zeros(4, 2), [0, 0, 1, 1], 0, 0.1, jitter=-1.0), "jitter"),
    (lambda: pw.blurred_copier_m_point(torch.zeros(3, 2), 0.0, 0.1), "blur"),
    (lambda: sample_unique_counts([0.6, 0.6], 10), "probabilities"),
    (lambda: sample_unique_counts([0.1], 2.5), "n_gen"),
])
def test_bad_arguments_name_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()
