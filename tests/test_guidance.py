"""Classifier-free guidance: the CFG score against its definition (seed 004, Eq. 2), then the metrics."""
import pytest
import torch

from mempkg import VPSDE, guidance
from mempkg.guidance import CFGScore, cfg_metrics, cfg_vector_norm
from mempkg.nets import MLPScoreNet
from mempkg.score import NetworkScore

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
