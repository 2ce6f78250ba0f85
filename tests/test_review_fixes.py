"""Regression tests for argument checks and edge cases found in review."""
import numpy as np
import pytest
import torch

from mempkg import VPSDE, GaussianScore, data
from mempkg.lid import lpca, normal_bundle
from mempkg.nets import MLPScoreNet, UNet
from mempkg.ode import ode_step
from mempkg.score import NetworkScore
from mempkg.train import train_score_model
from mempkg.volume import score_jvp

SDE = VPSDE()


def test_ode_step_rejects_unknown_methods():
    model = GaussianScore(torch.zeros(2), torch.eye(2), SDE)
    with pytest.raises(ValueError, match="method"):
        ode_step(SDE, model, torch.zeros(1, 2), 0.5, 0.4, method="bogus")


def test_score_jvp_follows_per_example_times():
    torch.manual_seed(0)
    score = NetworkScore(MLPScoreNet((3,), hidden=8, n_blocks=1), SDE, "eps")
    x, t = torch.randn(2, 3), torch.tensor([0.2, 0.7])
    tangents = torch.randn(2, 4, 3)
    out = score_jvp(score, x, t, tangents)
    single = score_jvp(score, x[1:], 0.7, tangents[1:])
    assert out.shape == (2, 4, 3) and torch.allclose(out[1:], single, atol=1e-5)


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="time_dim must be even"):
        MLPScoreNet((2,), time_dim=5)
    with pytest.raises(ValueError, match="base must be divisible"):
        UNet((1, 8, 8), base=12, groups=8)


def test_training_refuses_to_resume_a_checkpoint_of_other_settings(tmp_path):
    net = MLPScoreNet((2,), hidden=4, n_blocks=1, time_dim=4)
    x = torch.randn(8, 2)
    train_score_model(net, x, SDE, 2, batch_size=4, progress=False, checkpoint=tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="other settings"):
        train_score_model(net, x, SDE, 4, batch_size=4, lr=0.5, progress=False, checkpoint=tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="snr_cap"):
        train_score_model(net, x, SDE, 2, snr_cap=-1.0, progress=False)
    with pytest.raises(ValueError, match="t_min"):
        train_score_model(net, x, SDE, 2, t_min=2.0, progress=False)


def test_lid_arguments_are_checked():
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha"):
        lpca(x, n_neighbors=10, alpha=1.5)
    with pytest.raises(ValueError, match="distance_quantile"):
        lpca(x, n_neighbors=10, version="ross", distance_quantile=-0.1)
    model = GaussianScore(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), SDE)
    with pytest.raises(ValueError, match="threshold"):
        normal_bundle(model, x[:1], SDE, threshold=2.0)


def test_data_and_sde_accept_valid_edge_values():
    x = data.von_mises_mixture(50, kappa=0.0, origin_weight=0.0, seed=0)
    assert torch.allclose(x.norm(dim=1), torch.ones(50), atol=1e-6)
    assert VPSDE(np.float32(0.1), np.float64(20.0)).beta_max == 20.0
