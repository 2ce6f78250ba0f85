"""A diffusers UNet2DModel and its scheduler as a score (mempkg.adapters); nothing is downloaded."""

import re
import subprocess
import sys
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from mempkg import VPSDE, adapters, lid  # noqa: E402
from mempkg.sampling import sample_ode  # noqa: E402
from mempkg.volume import volume_growth  # noqa: E402

SDE = VPSDE()


def tiny_unet(seed=0, **kwargs):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=4, **kwargs)
    return unet.eval()


def stated(pattern):
    """A number the module docstring of mempkg.adapters states, so the test and the text agree."""
    match = re.search(pattern, adapters.__doc__.replace("\n", " "))
    assert match, f"mempkg.adapters' docstring no longer states {pattern!r}"
    return float(match.group(1))


def test_the_default_schedule_is_the_vp_sdes_to_the_stated_precision():
    scheduler = diffusers.DDPMScheduler()
    assert (scheduler.config.beta_schedule, scheduler.config.num_train_timesteps) == ("linear", 1000)
    mismatch = adapters.schedule_mismatch(scheduler)
    assert mismatch == pytest.approx(stated(r"differ by at most ``([0-9.e-]+)``"), abs=5e-6)   # 8.1e-4
    # brute force, without the helper: abar_n against alpha((n + 1) / N)^2 over all 1,000 steps
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert float((abar - SDE.alpha(t) ** 2).abs().max()) == pytest.approx(mismatch, rel=1e-9)
    relative = adapters.schedule_mismatch(scheduler, relative=True)
    assert 0.06 < relative <= stated(r"by at most (\d+) % relatively") / 100          # "at most 7 %"
    assert adapters.vpsde_for(scheduler).beta_min == pytest.approx(SDE.beta_min)
    assert adapters.vpsde_for(scheduler).beta_max == pytest.approx(SDE.beta_max)


def test_the_time_map_hits_the_scheduler_timesteps():
    scheduler = diffusers.DDPMScheduler()
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    n = torch.tensor([0, 10, 250, 500, 900, 995])
    # the continuous time whose alpha(t)^2 is abar_n: invert the VP-SDE's log-mean
    t = torch.tensor([SDE.t_of_m(-0.5 * float(abar[k].log())) for k in n], dtype=torch.float64)
    tau = adapters.continuous_to_timestep(t, scheduler, SDE)
    assert torch.allclose(tau, n.double(), atol=1e-6)
    assert torch.all(tau.diff() > 0)
    # and back: the noise level at tau is the VP-SDE's at t
    lo = tau.floor().long().clamp(max=998)
    log_abar = abar.log()
    interp = log_abar[lo] + (tau - lo) * (log_abar[lo + 1] - log_abar[lo])
    assert torch.allclose(interp, -2 * SDE.m(t), atol=1e-9)
    # near the naive n = 1000 t - 1 (docstring: "within 3.4 timesteps"), monotone, clamped outside t_range
    grid = torch.linspace(1e-3, 1, 2001, dtype=torch.float64)
    tau = adapters.continuous_to_timestep(grid, scheduler, SDE)
    assert float((tau - (1000 * grid - 1)).abs().max()) <= stated(r"within ([0-9.]+) timesteps")
    assert torch.all(tau.diff() > 0)
    fine = torch.linspace(1e-3, 1, 100_001, dtype=torch.float64)
    nearest = (1000 * fine - 1).round().clamp(0, 999).long()        # what interpolation avoids
    missed = float((abar[nearest] - SDE.alpha(fine) ** 2).abs().max())
    assert missed == pytest.approx(stated(r"would miss ``alpha\(t\)\^2`` by up to ``([0-9.e-]+)``"), abs=5e-5)
    assert float(adapters.continuous_to_timestep(1e-6, scheduler, SDE)) == 0.0
    t_min, t_max = adapters.from_diffusers(tiny_unet(), scheduler).net.t_range
    assert t_min == pytest.approx(9.2e-4, abs=5e-6) and t_max == pytest.approx(1.0)
    assert float(adapters.continuous_to_timestep(1.0, scheduler, SDE)) == pytest.approx(995.6, abs=0.05)


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


def test_per_example_times_and_the_dtype_of_x():
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler()
    score = adapters.from_diffusers(unet, scheduler, SDE)
    steps = torch.tensor([5, 300, 800])
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)[steps]
    t = torch.tensor([SDE.t_of_m(-0.5 * float(a.log())) for a in abar])
    g = torch.Generator().manual_seed(1)
    xt = scheduler.add_noise(torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g), steps)
    with torch.no_grad():
        expected = -unet(xt, steps).sample / (1 - abar.float()).sqrt().reshape(3, 1, 1, 1)
        got = score(xt, t)                                       # one time per example
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        got64 = score(xt.double(), t.double())                   # the UNet runs in float32
    assert got64.dtype == torch.float64 and got64.device == xt.device
    assert torch.allclose(got64, got.double(), rtol=1e-4, atol=1e-4 * got.abs().max().item())


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
    growth = volume_growth(score, x[:2], SDE, n_axes=3, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert growth.log_growth.shape == (2, 3) and torch.isfinite(growth.log_growth).all()


class Calls:
    """Counts the UNet's forward passes: a refused input must not run the network."""

    def __init__(self, unet):
        self.n = 0
        unet.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))


def test_a_class_conditional_unet_needs_a_label():
    unet = tiny_unet(num_class_embeds=3)
    calls = Calls(unet)
    scheduler = diffusers.DDPMScheduler()
    with pytest.raises(ValueError, match=r"label: the UNet is class-conditional \(3 classes\)"):
        adapters.from_diffusers(unet, scheduler)
    for bad, message in ((5, "label must lie in 0..2"), (torch.tensor([0, 3]), "label must lie"),
                         (0.5, "label must be an int"), (torch.zeros(2, 2, dtype=torch.long), "label must be")):
        with pytest.raises(ValueError, match=message):
            adapters.from_diffusers(unet, scheduler, label=bad)
    with pytest.raises(ValueError, match="not class-conditional"):
        adapters.from_diffusers(tiny_unet(), scheduler, label=0)
    score = adapters.from_diffusers(unet, scheduler, label=2)
    with pytest.raises(ValueError, match="label: this UNet is class-conditional"):
        score.with_label(None)(torch.randn(2, 1, 8, 8), 0.5)
    assert calls.n == 0
    with torch.no_grad():
        assert score(torch.randn(2, 1, 8, 8), 0.5).shape == (2, 1, 8, 8)
        per_example = adapters.from_diffusers(unet, scheduler, label=torch.tensor([2, 0]))
        assert torch.allclose(per_example(torch.zeros(2, 1, 8, 8), 0.5)[0], score(torch.zeros(1, 1, 8, 8), 0.5)[0],
                              atol=1e-5)


def test_bad_models_and_schedulers_are_refused():
    unet = tiny_unet()
    calls = Calls(unet)
    cases = [
        (torch.nn.Linear(2, 2), diffusers.DDPMScheduler(), r"unet must be a diffusers UNet2DModel .*got Linear"),
        (tiny_unet(time_embedding_type="learned", num_train_timesteps=1000), diffusers.DDPMScheduler(),
         "unet must embed timesteps with time_embedding_type='positional'"),
        (unet, object(), "scheduler must be a diffusers DDPMScheduler or DDIMScheduler with prediction_type"),
        (unet, diffusers.DDPMScheduler(prediction_type="flow"), "prediction_type 'flow'"),
        (unet, types.SimpleNamespace(config=types.SimpleNamespace(prediction_type="epsilon")),
         "scheduler must be .*with alphas_cumprod"),
    ]
    for bad_unet, bad_scheduler, message in cases:
        with pytest.raises(ValueError, match=message):
            adapters.from_diffusers(bad_unet, bad_scheduler)
    cross_attention = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2)
    with pytest.raises(ValueError, match="got UNet2DConditionModel"):
        adapters.from_diffusers(cross_attention, diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="beta_schedule='linear'"):
        adapters.vpsde_for(diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    score = adapters.from_diffusers(unet, diffusers.DDPMScheduler())
    for t, message in ((0.0, r"t must lie in \(0, 1\]"), (torch.full((3,), 0.5), r"shape \(batch,\)")):
        with pytest.raises(ValueError, match=message):
            score(torch.randn(2, 1, 8, 8), t)
    assert calls.n == 0


def test_import_mempkg_does_not_import_diffusers():
    code = "import sys, mempkg; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
