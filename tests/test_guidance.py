"""Classifier-free guidance: the CFG score against its definition (seed 004, Eq. 2), then the metrics."""
import math

import pytest
import torch

from mempkg import VPSDE, guidance
from mempkg.guidance import CFGScore, cfg_metrics, cfg_vector_norm
from mempkg.lid import flipd
from mempkg.nets import MLPScoreNet
from mempkg.score import GaussianScore, MixtureScore, NetworkScore

SDE = VPSDE()


def conditional_score(seed=0):
    torch.manual_seed(seed)
    return NetworkScore(MLPScoreNet((4,), hidden=16, n_blocks=1, time_dim=8, n_classes=3), SDE, "x0")


def test_cfg_score_interpolates_and_extrapolates_between_null_and_conditional():
    score = conditional_score()
    x, t = torch.randn(5, 4), 0.3
    cond, null = score.with_label(2)(x, t), score.with_label(None)(x, t)
    assert torch.allclose(CFGScore(score, 2, 0.0)(x, t), null)
    assert torch.allclose(CFGScore(score, 2, 1.0)(x, t), cond, atol=1e-6)
    assert torch.allclose(CFGScore(score, 2, 3.0)(x, t), null + 3.0 * (cond - null), atol=1e-5)
    vec, uncond = CFGScore(score, 2, 3.0).cfg_vector(x, t, return_unconditional=True)
    assert torch.allclose(vec, cond - null) and torch.allclose(uncond, null)


def test_cfg_vector_norm_is_zero_for_a_network_that_ignores_its_label():
    score = conditional_score()
    with torch.no_grad():
        score.net.class_embed.weight.zero_()          # every label embeds to zero: conditional = null
    x = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    norms, guided = cfg_vector_norm(score, x, SDE, labels, t0=0.05, n_steps=2, scale=2.0)
    _, unguided = cfg_vector_norm(score, x, SDE, labels, t0=0.05, n_steps=2, scale=0.0)
    assert torch.allclose(norms, torch.zeros(6), atol=1e-6)
    assert torch.allclose(guided, unguided, atol=1e-5), "with a zero CFG vector every scale gives the null score"
    with pytest.warns(DeprecationWarning, match="cfg_vector_norm"):
        old = cfg_vector_norm(score, x, labels, SDE, t0=0.05, n_steps=2)
    assert torch.equal(old, norms)


def test_cfg_metrics_return_finite_numbers_and_check_their_arguments():
    score = conditional_score()
    out = cfg_metrics(score, 1, SDE, scale=2.0, n_trajectories=3, n_steps=10, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"A_cfg", "A_score", "A_flipd"} and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    with pytest.warns(DeprecationWarning, match="n_trajectories"):
        cfg_metrics(score, 1, SDE, n_samples=2, n_steps=10)
    with pytest.raises(ValueError, match="label"):
        CFGScore(score, 3, 1.0)
    with pytest.raises(ValueError, match="scale"):
        CFGScore(score, 1, -1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        CFGScore(NetworkScore(MLPScoreNet((4,), hidden=8, n_blocks=1), SDE), 0)
    with pytest.raises(ValueError, match="t_max_flipd"):
        cfg_metrics(score, 1, SDE, n_trajectories=2, n_steps=4, t_max_flipd=1e-4)


def test_noise_detectors_on_shared_draws_zero_for_a_label_blind_network_and_checked():
    score = conditional_score()
    g = torch.Generator().manual_seed(0)
    out = guidance.noise_detectors(score, SDE, [0, 2], n_draws=5, generator=g)
    assert out["norm"].shape == out["alignment"].shape == (2, 5)
    assert (out["norm"] >= 0).all() and (out["alignment"].abs() <= 1 + 1e-6).all()
    again = guidance.noise_detectors(score, SDE, [0, 2], n_draws=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["norm"], again["norm"])
    # the first-step norm by hand: sigma(1) |s(x, 1, c) - s(x, 1, null)| on the same draw
    x = SDE.prior_sample((5, 4), generator=torch.Generator().manual_seed(0))
    by_hand = SDE.sigma(1.0) * (score.with_label(2)(x, 1.0) - score.with_label(None)(x, 1.0)).norm(dim=1)
    assert torch.allclose(out["norm"][1], by_hand, rtol=1e-5)
    with torch.no_grad():
        score.net.class_embed.weight.zero_()            # the label no longer changes the network
    blind = guidance.noise_detectors(score, SDE, [1], n_draws=3)
    assert blind["norm"].abs().max() < 1e-6
    with pytest.raises(ValueError, match="label"):
        guidance.noise_detectors(score, SDE, [7])
    with pytest.raises(ValueError, match="n_draws"):
        guidance.noise_detectors(score, SDE, [0], n_draws=0)


# --- The App. D.2 metrics on exact scores, where they have closed forms ---------------------------

def gaussian_cfg(scale, cov=(0.25, 0.25, 0.25)):
    """CFG of two Gaussians with one covariance: again the exact score of a Gaussian, with mean
    ``mu_u + scale (mu_c - mu_u)``, so its ODE's marginals are those of its own score."""
    cov = torch.tensor(cov, dtype=torch.float64)
    mu_c, mu_u = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    return CFGScore.from_scores(GaussianScore(mu_c, cov, SDE), GaussianScore(mu_u, cov, SDE), scale), mu_c - mu_u


def schedule(times):
    alpha = torch.tensor([SDE.alpha(t) for t in times.tolist()], dtype=torch.float64)
    return alpha, torch.tensor([SDE.v(t) for t in times.tolist()], dtype=torch.float64)


def assert_monte_carlo_mean(per_trajectory, value, slack=0.02, what=""):
    """The mean of the per-trajectory values is ``value`` within four standard errors (+ ``slack``)."""
    se = per_trajectory.std().item() / math.sqrt(per_trajectory.numel())
    mean = per_trajectory.mean().item()
    assert abs(mean - value) < 4 * se + slack, f"{what}: {mean:.3f} is not {value} (standard error {se:.3f})"


def test_time_average_is_the_uniform_average_on_any_grid():
    times = torch.exp(torch.linspace(0.0, math.log(1e-3), 61, dtype=torch.float64))      # log grid, 1 -> 1e-3
    line = torch.stack([times, 3 * times + 1], 1)
    avg = guidance.time_average(times, line, float(times[-1]), 1.0)           # exact for a linear integrand
    mid = (float(times[-1]) + 1.0) / 2
    assert torch.allclose(avg, torch.tensor([mid, 3 * mid + 1], dtype=torch.float64), rtol=1e-12)
    # a window whose edges are not grid times, and NaN outside it: the mean of t^2 on [0.01, 0.2]
    square = torch.where(times <= 0.3, times ** 2, torch.nan)
    exact = (0.2 ** 3 - 0.01 ** 3) / 3 / 0.19
    assert abs(guidance.time_average(times, square, 0.01, 0.2).item() - exact) < 1e-2 * exact
    # a plain mean over a log grid is not the uniform average: it over-weights small t
    assert times.mean() < 0.5 * mid
    with pytest.raises(ValueError, match="window"):
        guidance.time_average(times, line, 1e-4, 1.0)
    with pytest.raises(ValueError, match="values"):
        guidance.time_average(times, line[:-1], 0.01, 1.0)


def test_metric_times_end_a_window_on_t_max_flipd():
    taus = guidance.metric_times(20, t_min=1e-3, t_max_flipd=0.2)
    assert taus[0] == 1.0 and taus[-1] == 1e-3 and len(taus) == 22
    assert bool((taus.diff() < 0).all()) and bool(torch.isclose(taus, torch.tensor(0.2, dtype=taus.dtype)).any())


def test_a_cfg_of_gaussians_is_lambda_squared_times_the_squared_cfg_vector_in_closed_form():
    # s_c - s_null = alpha (mu_c - mu_u) / S_t with S_t = alpha^2 c + v for every x: Eq. 24's integrand is
    # lambda^2 v alpha^2 |mu_c - mu_u|^2 / S_t^2 on every trajectory, whatever the sampler does
    for scale in (1.0, 3.0):
        guided, delta = gaussian_cfg(scale)
        found = guidance.cfg_integrands(guided, None, SDE, n_trajectories=5, n_steps=40,
                                        generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        alpha, v = schedule(found.times)
        closed = scale ** 2 * v * alpha ** 2 * delta.pow(2).sum() / (alpha ** 2 * 0.25 + v) ** 2
        assert torch.allclose(found.cfg, closed[:, None].expand(-1, 5), rtol=1e-9)
        wen = found.metrics()["A_cfg"] / scale ** 2           # Wen et al.'s metric: lambda^-2 Eq. 24
        fine = torch.exp(torch.linspace(math.log(1e-3), 0.0, 20001, dtype=torch.float64))
        a, w = schedule(fine)
        integral = torch.trapezoid(w * a ** 2 * delta.pow(2).sum() / (a ** 2 * 0.25 + w) ** 2, fine) / (1 - 1e-3)
        assert abs(wen - integral.item()) < 0.01 * integral.item(), "the log grid integrates Eq. 24 to 1 %"


def test_expected_flipd_along_a_consistent_scores_own_trajectories_is_d_not_the_lid():
    # data on a line in R^3 (LID 1); the CFG of two such Gaussians is again the exact score of one
    guided, _ = gaussian_cfg(2.0, cov=(1.0, 0.0, 0.0))
    found = guidance.cfg_integrands(guided, None, SDE, n_trajectories=1000, n_steps=60, n_probes=None,
                                    generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_time = found.flipd.nanmean(1)
    window = found.times <= 0.2
    assert torch.allclose(per_time[window], torch.full_like(per_time[window], 3.0), atol=0.3)
    per = found.metrics(per_trajectory=True)
    assert_monte_carlo_mean(per["A_flipd"], 3.0, what="A^FLIPD = d = 3 for a self-consistent score")
    # ... while FLIPD of the same score at clean points of its line (mean mu_u + 2 (mu_c - mu_u))
    # estimates the LID, 1
    clean = torch.zeros(200, 3, dtype=torch.float64)
    clean[:, 0] = torch.randn(200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lid = flipd(guided, clean + torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64), SDE, t0=1e-3, n_probes=None)
    assert abs(lid.mean().item() - 1.0) < 0.1
    # A^score = average of v d / S_t in expectation (S_t = v + alpha^2 on the line, v across it)
    alpha, v = schedule(found.times)
    expect = v * (1 / (alpha ** 2 + v) + 2 / v)
    assert_monte_carlo_mean(per["A_score"], guidance.time_average(found.times, expect, 1e-3, 1.0).item(),
                            what="A^score")


def test_expected_flipd_along_an_exact_mixtures_trajectories_is_d_for_every_class():
    # a three-component mixture in R^2; class 0 owns two components, class 1 one (a "rare" point mass)
    comps = [GaussianScore(torch.tensor(m, dtype=torch.float64), torch.tensor(c, dtype=torch.float64), SDE)
             for m, c in (([1.0, 1.0], [0.3, 0.0]), ([-1.0, 0.5], [0.0, 0.2]), ([0.5, -1.0], [0.0, 0.0]))]
    uncond = MixtureScore(comps, torch.tensor([0.45, 0.45, 0.1], dtype=torch.float64))
    classes = {0: MixtureScore(comps[:2]), 1: comps[2]}
    for c, cond in classes.items():
        found = guidance.cfg_integrands(CFGScore.from_scores(cond, uncond, 1.0, label=c), None, SDE,
                                        n_trajectories=1000, n_steps=40, n_probes=None,
                                        generator=torch.Generator().manual_seed(c), dtype=torch.float64)
        assert_monte_carlo_mean(found.metrics(per_trajectory=True)["A_flipd"], 2.0,
                                what=f"class {c}: A^FLIPD is d = 2, not its LID")


def test_cfg_integrands_checks_its_arguments():
    guided, _ = gaussian_cfg(1.0)
    with pytest.raises(ValueError, match="label and scale"):
        guidance.cfg_integrands(guided, 1, SDE)
    with pytest.raises(ValueError, match="t_min"):
        guidance.cfg_integrands(guided, None, SDE, t_min=0.0)
    found = guidance.cfg_integrands(guided, None, SDE, n_trajectories=2, n_steps=8)
    with pytest.raises(ValueError, match="t_min"):
        found.metrics(t_min=1e-4)
    per = found.metrics(t_min=0.02, per_trajectory=True)
    assert per["A_flipd"].shape == (2,) and bool(torch.isfinite(per["A_flipd"]).all())
    with pytest.raises(ValueError, match="data_shape"):
        CFGScore.from_scores(guided.conditional, GaussianScore(torch.zeros(2), torch.ones(2), SDE))
