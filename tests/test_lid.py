"""LID estimators: closed forms on subspace Gaussians and spheres, then behaviour, then errors."""
import math

import numpy as np
import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore
from mempkg.data import digits, subspace_gaussian
from mempkg.lid import (flipd, flipd_closed_form_subspace, jacobian_rank, knn_indices, lpca, normal_bundle, rank_by_gap,
                        rank_by_noise_floor, rank_by_quantile)
from mempkg.nets import MLPScoreNet
from mempkg.score import NetworkScore, SphereScore

SDE = VPSDE()
F64 = torch.float64


def subspace_model(d, k, seed=0):
    x, basis = subspace_gaussian(64, d, k, seed=seed)
    return x, GaussianScore(torch.zeros(d, dtype=F64), basis @ basis.T, SDE)


@pytest.mark.parametrize("k", [0, 1, 3, 8])
@pytest.mark.parametrize("t0", [1e-4, 1e-2, 0.05, 0.5])
def test_exact_trace_flipd_matches_the_closed_form(k, t0):
    x, model = subspace_model(12, k, seed=k)
    exact = flipd(model, x, SDE, t0=t0, n_probes=None, chunk_size=5)
    closed = flipd_closed_form_subspace(x, k, SDE, t0)
    assert torch.allclose(exact, closed, rtol=1e-4, atol=1e-9)


def test_flipd_tends_to_k_as_t0_vanishes():
    x, model = subspace_model(10, 4)
    assert torch.allclose(flipd(model, x, SDE, t0=1e-4, n_probes=None), torch.full((64,), 4.0, dtype=F64), atol=1e-2)


def test_hutchinson_is_unbiased_within_its_standard_error():
    x, model = subspace_model(10, 3)
    point = x[:1].expand(4000, 10)
    draws = flipd(model, point, SDE, t0=0.05, n_probes=1, generator=torch.Generator().manual_seed(0))
    exact = flipd(model, x[:1], SDE, t0=0.05, n_probes=None).item()
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * se
    many = flipd(model, x[:1], SDE, t0=0.05, n_probes=4000, generator=torch.Generator().manual_seed(1)).item()
    assert abs(many - exact) < 4 * draws.std().item() / math.sqrt(4000)


@pytest.mark.parametrize("k", [1, 2])
def test_flipd_and_normal_bundle_on_spheres(k):
    model = SphereScore(k, 6, SDE)
    x = model.sample(8, 0.0, generator=torch.Generator().manual_seed(k))
    assert torch.allclose(flipd(model, x, SDE, t0=1e-3, n_probes=None), torch.full((8,), float(k), dtype=F64), atol=1e-2)
    # in d = 6 the default K = 4d = 24 samples put the normal singular values in a wide
    # Marchenko-Pastur bulk (edges sqrt(24) -+ sqrt(5)); 200 samples make it narrow
    nb = normal_bundle(model, x, SDE, t0=1e-2, n_samples=200, generator=torch.Generator().manual_seed(0))
    assert nb.tolist() == [k] * 8


def test_empirical_score_is_zero_dimensional_at_training_points():
    train = digits(32, dtype=F64)
    model = EmpiricalScore(train, SDE)
    assert flipd(model, train[:6], SDE, t0=0.01, n_probes=None).abs().max().item() < 1e-6
    assert normal_bundle(model, train[:3], SDE, t0=0.01, generator=torch.Generator().manual_seed(0)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("k", [1, 2])
def test_normal_bundle_at_the_default_t0_on_a_circle_and_a_sphere_in_64_dimensions(k):
    """Closed-form truth LID = k at every point. The largest gap after an appended zero returned
    LID 0 at 42.5 % (circle) and 26.5 % (sphere) of these 200 points; the noise floor gets all."""
    model = SphereScore(k, 64, SDE)
    x = model.sample(200, 0.0, generator=torch.Generator().manual_seed(k))
    lid, sv = normal_bundle(model, x, SDE, generator=torch.Generator().manual_seed(0),
                            return_singular_values=True)
    assert lid.tolist() == [k] * 200
    old_rule = 64 - rank_by_gap(sv)
    assert 0.2 < (old_rule == 0).double().mean().item() < 0.5
    assert torch.equal(lid, 64 - rank_by_noise_floor(sv, 4 * 64, 1 / SDE.sigma(0.1)))


@pytest.mark.parametrize("t0", [0.01, 0.1])
def test_normal_bundle_gives_zero_at_training_points_of_an_empirical_score(t0):
    """A point mass: the score near a training point is -eps / sigma in all d directions."""
    train = digits(32, dtype=F64)
    lid = normal_bundle(EmpiricalScore(train, SDE), train[:8], SDE, t0=t0,
                        generator=torch.Generator().manual_seed(0))
    assert lid.tolist() == [0] * 8


def test_rank_by_noise_floor_on_gaussian_matrices():
    """r normal directions of scale 5 and d - r tangent ones of scale 1: rank r, for any r."""
    g = torch.Generator().manual_seed(0)
    for r in (0, 1, 10, 40, 64):
        scales = torch.cat([torch.full((r,), 5.0), torch.ones(64 - r)]).double()
        sv = torch.stack([torch.linalg.svdvals(torch.randn(256, 64, generator=g, dtype=F64) * scales)
                          for _ in range(5)])
        assert rank_by_noise_floor(sv, 256, scale=5.0).tolist() == [r] * 5
    assert rank_by_noise_floor(torch.zeros(2, 4, dtype=F64), 16).tolist() == [0, 0]
    with pytest.raises(ValueError, match="margin"):
        rank_by_noise_floor(torch.ones(1, 3), 10, margin=0.0)
    with pytest.raises(ValueError, match="scale"):
        rank_by_noise_floor(torch.ones(1, 3), 10, scale=-1.0)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_normal_bundle_recovers_k_on_linear_subspaces(k):
    x, model = subspace_model(10, k, seed=k)
    nb = normal_bundle(model, x[:6], SDE, t0=1e-3, generator=torch.Generator().manual_seed(0))
    assert nb.tolist() == [k] * 6
    nb_thr, sv = normal_bundle(model, x[:2], SDE, t0=1e-3, threshold=0.1, n_samples=80,
                               generator=torch.Generator().manual_seed(0), return_singular_values=True)
    assert nb_thr.tolist() == [k, k] and sv.shape == (2, 10)


def test_rank_by_gap_can_return_full_rank():
    assert rank_by_gap(torch.tensor([[1.0, 0.9, 0.8]])).item() == 3
    assert rank_by_gap(torch.tensor([[1.0, 0.95, 0.01]])).item() == 2


@pytest.mark.parametrize("k", [1, 3, 6])
def test_lpca_recovers_k_on_linear_subspaces(k):
    x, _ = subspace_gaussian(200, 12, k, seed=k)
    assert (lpca(x, n_neighbors=40) == k).all()
    assert (lpca(x, x=x[:5] + 0.0, n_neighbors=40) == k).all()


def test_lpca_gives_zero_to_duplicated_points_in_the_ross_version():
    """Restricting neighbourhoods to very close points isolates exact duplicates (LID 0). The
    radius is a quantile of all pairwise distances: here 0.2 % of the pairs, fewer than the 30
    zero-distance pairs the duplicates make, so the radius is 0."""
    train = digits(150, dtype=F64)
    with_dups = torch.cat([train, train[:5].repeat(3, 1, 1, 1)])
    lid = lpca(with_dups, n_neighbors=30, version="ross", distance_quantile=0.002)
    assert (lid[:5] == 0).all() and lid[5:150].float().mean() > 1


def test_the_ross_threshold_ignores_zero_variances():
    """Two directions of variance 1, two of 1e-4, sixteen of 0, and five points tripled. The
    median of the non-zero variances lies between the two groups: LID 2 (0 at the duplicates).
    Counting the zeros (80 % of all variances) the median was 0 and every point got its rank, 4."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(150, 20, dtype=F64)
    x[:, :4] = torch.randn(150, 4, generator=g, dtype=F64) * torch.tensor([1.0, 1.0, 1e-2, 1e-2], dtype=F64)
    data = torch.cat([x, x[:5].repeat(2, 1)])
    lid = lpca(data, n_neighbors=30, version="ross", variance_quantile=0.5, distance_quantile=0.001)
    assert lid[:5].tolist() == [0] * 5 and lid[5:150].tolist() == [2] * 145
    assert lpca(x[:1].repeat(40, 1), n_neighbors=10, version="ross").tolist() == [0] * 40


def test_lpca_agrees_with_scikit_dimension_on_the_same_neighbourhoods():
    skdim = pytest.importorskip("skdim")
    data = digits(250, seed=3, dtype=F64).flatten(1)
    knn = knn_indices(data, 40)
    reference = skdim.id.lPCA(ver="FO", alphaFO=0.05).fit_pw(data.numpy(), precomputed_knn=knn.numpy()).dimension_pw_
    ours = lpca(data, neighbors=knn, variance_ratio=0.05)
    assert np.array_equal(ours.numpy(), reference)
    assert torch.equal(lpca(data, n_neighbors=40), ours)


def test_jacobian_rank_of_a_linear_decoder():
    a = torch.randn(20, 3, dtype=F64) @ torch.randn(3, 5, dtype=F64)     # rank 3 map from R^5

    def decoder(z):
        return z @ a.T

    ranks, sv = jacobian_rank(decoder, torch.randn(4, 5, dtype=F64), return_singular_values=True)
    assert ranks.tolist() == [3] * 4 and sv.shape == (4, 5)
    assert jacobian_rank(decoder, torch.randn(2, 5, dtype=F64), threshold=1e3).tolist() == [0, 0]


def test_flipd_works_with_networks_in_both_parameterizations():
    torch.manual_seed(0)
    net = MLPScoreNet((1, 4, 4), hidden=16, n_blocks=1)
    x = torch.randn(3, 1, 4, 4)
    for param in ("eps", "x0"):
        score = NetworkScore(net, SDE, param)
        exact = flipd(score, x, SDE, t0=0.1, n_probes=None)
        assert exact.shape == (3,) and torch.isfinite(exact).all()
        hutch = flipd(score, x, SDE, t0=0.1, n_probes=2000, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(hutch, exact, atol=0.5)
    eps_score = NetworkScore(net, SDE, "eps")
    via_score = flipd(lambda z, t: eps_score(z, t), x, SDE, t0=0.1, n_probes=None)   # no eps shortcut
    assert torch.allclose(via_score, flipd(eps_score, x, SDE, t0=0.1, n_probes=None), rtol=1e-4, atol=1e-3)
    assert normal_bundle(NetworkScore(net, SDE, "x0"), x[:1], SDE, n_samples=32).shape == (1,)
    in_parts = flipd(eps_score, x, SDE, t0=0.1, n_probes=None, batch_size=2)      # points two at a time
    assert torch.allclose(in_parts, flipd(eps_score, x, SDE, t0=0.1, n_probes=None), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("call,name", [
    (lambda m, x: flipd(m, x, SDE, t0=0.0), "t0"),
    (lambda m, x: flipd(m, x, SDE, t0=1.5), "t0"),
    (lambda m, x: flipd(m, x, SDE, n_probes=0), "n_probes"),
    (lambda m, x: flipd(m, x, SDE, batch_size=0), "batch_size"),
    (lambda m, x: normal_bundle(m, x, SDE, t0=-1.0), "t0"),
    (lambda m, x: normal_bundle(m, x, SDE, n_samples=0), "n_samples"),
    (lambda m, x: lpca(x, n_neighbors=64), "n_neighbors must be at most"),
    (lambda m, x: lpca(x, n_neighbors=10, version="mle"), "version"),
])
def test_bad_arguments_raise_naming_the_parameter(call, name):
    x, model = subspace_model(6, 2)
    with pytest.raises(ValueError, match=name):
        call(model, x)


def test_flipd_of_a_single_point_through_autodiff():
    torch.manual_seed(0)
    score = NetworkScore(MLPScoreNet((2,), hidden=8, n_blocks=1), SDE, "x0")
    one = flipd(score, torch.zeros(1, 2), SDE, t0=0.05, n_probes=None)
    assert one.shape == (1,) and torch.isfinite(one).all()


def test_lid_arguments_are_checked():
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="variance_ratio"):
        lpca(x, n_neighbors=10, variance_ratio=1.5)
    with pytest.raises(ValueError, match="distance_quantile"):
        lpca(x, n_neighbors=10, version="ross", distance_quantile=-0.1)
    model = GaussianScore(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), SDE)
    with pytest.raises(ValueError, match="threshold"):
        normal_bundle(model, x[:1], SDE, threshold=2.0)
    with pytest.raises(ValueError, match="quantile"):
        normal_bundle(model, x[:1], SDE, quantile=1.5)
    with pytest.raises(ValueError, match="at most one"):
        normal_bundle(model, x[:1], SDE, threshold=0.1, quantile=0.1)
    with pytest.warns(DeprecationWarning, match="variance_ratio"):
        assert torch.equal(lpca(x, n_neighbors=10, alpha=0.05), lpca(x, n_neighbors=10, variance_ratio=0.05))


def test_the_percentile_rule_is_one_global_threshold_on_the_same_draws():
    """normal_bundle(quantile=q) = d - #(singular values above the q-quantile of the whole batch)."""
    x, _ = subspace_gaussian(4, dim=6, k=2, seed=0)
    model = GaussianScore(torch.zeros(6, dtype=F64), torch.diag(torch.tensor([1.0, 1.0, 0, 0, 0, 0], dtype=F64)), SDE)
    lid, sv = normal_bundle(model, x, SDE, t0=0.01, n_samples=60, quantile=0.1,
                            generator=torch.Generator().manual_seed(0), return_singular_values=True)
    _, sv_again = normal_bundle(model, x, SDE, t0=0.01, n_samples=60, generator=torch.Generator().manual_seed(0),
                                return_singular_values=True)
    assert torch.equal(sv, sv_again)
    assert torch.equal(lid, 6 - (sv > torch.quantile(sv.flatten(), 0.1)).sum(1))
    assert torch.equal(lid, 6 - rank_by_quantile(sv, 0.1))


def test_one_probe_flipd_is_the_same_estimate_in_reverse_and_forward_mode():
    """Hutchinson by vector-Jacobian products (networks) equals the one by JVPs on the same probes."""
    torch.manual_seed(0)
    score = NetworkScore(MLPScoreNet((5,), hidden=16, n_blocks=1), SDE, "x0")
    x = torch.randn(7, 5, dtype=torch.float64)
    score.net.double()
    for n_probes in (1, 3):
        reverse = flipd(score, x, SDE, t0=0.1, n_probes=n_probes, generator=torch.Generator().manual_seed(1))
        forward = flipd(WithForwardJvp(score), x, SDE, t0=0.1, n_probes=n_probes,
                        generator=torch.Generator().manual_seed(1))
        assert torch.allclose(reverse, forward, rtol=1e-10, atol=1e-9)


class WithForwardJvp:
    """A score that offers a jvp (by forward-mode autodiff), so FLIPD takes its forward-mode path."""

    def __init__(self, score):
        self.score = score

    def __call__(self, x, t):
        return self.score(x, t)

    def jvp(self, x, t, tangents):
        b, k = tangents.shape[:2]
        _, out = torch.func.jvp(lambda z: self.score(z, t), (x.repeat_interleave(k, 0),),
                                (tangents.reshape(b * k, *x.shape[1:]),))
        return out.reshape(tangents.shape)


def test_score_trace_of_a_gaussian_is_its_closed_form():
    from mempkg.lid import score_trace

    sde, d, c, t = VPSDE(), 6, 0.3, 0.2
    gauss = GaussianScore(torch.zeros(d, dtype=torch.float64), c * torch.eye(d, dtype=torch.float64), sde)
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = -d / (sde.alpha(t) ** 2 * c + sde.v(t))  # s(x) = -x / (alpha^2 c + v)
    assert torch.allclose(score_trace(gauss, x, t), torch.full((5,), exact, dtype=torch.float64))
    assert torch.allclose(score_trace(gauss, x, t, chunk_size=4), torch.full((5,), exact, dtype=torch.float64))
    # Hutchinson with Rademacher probes is exact for a multiple of the identity
    g = torch.Generator().manual_seed(1)
    assert torch.allclose(score_trace(gauss, x, t, n_probes=3, generator=g), torch.full((5,), exact, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_probes"):
        score_trace(gauss, x, t, n_probes=0)
    with pytest.raises(ValueError, match="chunk_size"):
        score_trace(gauss, x, t, chunk_size=0)


def test_normal_bundle_chunks_do_not_change_the_estimate():
    """The noisy copies may pass through the score in chunks (a network's memory on a GPU)."""
    sde = VPSDE()
    x = torch.randn(3, 1, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = GaussianScore(torch.zeros(1, 2, 4, dtype=torch.float64), torch.eye(8, dtype=torch.float64), sde)
    whole, sv = normal_bundle(score, x, sde, generator=torch.Generator().manual_seed(1), return_singular_values=True)
    parts, sv_parts = normal_bundle(score, x, sde, generator=torch.Generator().manual_seed(1), chunk_size=5,
                                    return_singular_values=True)
    assert torch.equal(whole, parts)
    assert torch.allclose(sv, sv_parts)
    with pytest.raises(ValueError, match="chunk_size"):
        normal_bundle(score, x, sde, chunk_size=0)
