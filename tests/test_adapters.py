"""A diffusers UNet2DModel and its scheduler as a score (mempkg.adapters); nothing is downloaded."""

import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from mempkg import VPSDE, adapters, lid  # noqa: E402
from mempkg.sampling import sample_ode  # noqa: E402

SDE = VPSDE()


def tiny_unet(seed=0, **kwargs):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=4, **kwargs)
    return unet.eval()


def test_the_default_schedule_is_the_vp_sdes_to_the_stated_precision():
    mismatch = adapters.schedule_mismatch(diffusers.DDPMScheduler())
    assert mismatch == pytest.approx(8.1e-4, abs=1e-5)          # the numbers in mempkg.adapters'
    relative = adapters.schedule_mismatch(diffusers.DDPMScheduler(), relative=True)
    assert 0.06 < relative < 0.07                                 # docstring: "at most 7 %"


def test_the_time_map_hits_the_scheduler_timesteps():
    scheduler = diffusers.DDPMScheduler()
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    n = torch.tensor([0, 10, 250, 500, 900])
    # the continuous time whose alpha(t)^2 is abar_n: invert the VP-SDE's log-mean
    t = torch.tensor([SDE.t_of_m(-0.5 * float(abar[k].log())) for k in n], dtype=torch.float64)
    tau = adapters.continuous_to_timestep(t, scheduler, SDE)
    assert torch.allclose(tau, n.double(), atol=1e-6)
    assert float(adapters.continuous_to_timestep(1e-6, scheduler, SDE)) == 0.0      # clamped
    assert torch.all(tau.diff() > 0)


@pytest.mark.parametrize("scheduler_class", ["DDPMScheduler", "DDIMScheduler"])
def test_the_score_is_minus_the_predicted_noise_over_sigma_at_the_schedulers_own_noise(scheduler_class):
    unet = tiny_unet()
    scheduler = getattr(diffusers, scheduler_class)()
    score = adapters.from_diffusers(unet, scheduler, SDE)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    for step in (0, 37, 400, 900):
        timesteps = torch.full((3,), step, dtype=torch.long)
        xt = scheduler.add_noise(x0, eps, timesteps)
        abar = float(scheduler.alphas_cumprod[step])
        t = SDE.t_of_m(-0.5 * torch.log(torch.tensor(abar, dtype=torch.float64)).item())
        with torch.no_grad():
            expected = -unet(xt, timesteps).sample / (1 - abar) ** 0.5
            got = score(xt, t)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert score.data_shape == (1, 8, 8)


def test_v_and_sample_predictions_become_the_same_noise():
    unet = tiny_unet()
    x = torch.randn(2, 1, 8, 8)
    eps_net = adapters.DiffusersEpsNet(unet, diffusers.DDPMScheduler(), SDE)
    v_net = adapters.DiffusersEpsNet(unet, diffusers.DDPMScheduler(prediction_type="v_prediction"), SDE)
    x0_net = adapters.DiffusersEpsNet(unet, diffusers.DDPMScheduler(prediction_type="sample"), SDE)
    t = 0.3
    with torch.no_grad():
        out = eps_net(x, t)                       # the raw UNet output, read three ways
        a, s = SDE.alpha(t), SDE.sigma(t)
        assert torch.allclose(v_net(x, t), a * out + s * x, atol=1e-4)
        assert torch.allclose(x0_net(x, t), (x - a * out) / s, atol=1e-4)


def test_it_samples_and_feeds_the_estimators():
    score = adapters.from_diffusers(tiny_unet(), diffusers.DDIMScheduler(), SDE)
    x = sample_ode(score, (4, 1, 8, 8), SDE, n_steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    f = lid.flipd(score, x, SDE, t0=0.1, generator=torch.Generator().manual_seed(0))
    assert f.shape == (4,) and torch.isfinite(f).all()


def test_a_class_conditional_unet_needs_a_label():
    unet = tiny_unet(num_class_embeds=3)
    scheduler = diffusers.DDPMScheduler()
    with pytest.raises(ValueError, match="class-conditional"):
        adapters.from_diffusers(unet, scheduler)(torch.randn(2, 1, 8, 8), 0.5)
    score = adapters.from_diffusers(unet, scheduler, label=2)
    with torch.no_grad():
        assert score(torch.randn(2, 1, 8, 8), 0.5).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="label must lie"):
        adapters.from_diffusers(unet, scheduler, label=5)
    with pytest.raises(ValueError, match="not class-conditional"):
        adapters.from_diffusers(tiny_unet(), scheduler, label=0)


def test_bad_models_and_schedulers_are_refused():
    with pytest.raises(ValueError, match="UNet2DModel"):
        adapters.from_diffusers(torch.nn.Linear(2, 2), diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="prediction_type"):
        adapters.from_diffusers(tiny_unet(), object())


def test_import_mempkg_does_not_import_diffusers():
    code = "import sys, mempkg; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
