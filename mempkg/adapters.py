"""Other libraries' diffusion models as the book's score functions.

:func:`from_diffusers` reads a Hugging Face ``diffusers`` ``UNet2DModel`` and its ``DDPMScheduler``
or ``DDIMScheduler`` (a discrete-time noise-prediction network) as a
:class:`~mempkg.score.NetworkScore` of the continuous-time VP-SDE, so every estimator of the package
(volume growth, FLIPD, the normal bundle, the audit) runs on it unchanged.

How time is mapped. The scheduler noises as ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps``, the
VP-SDE as ``x_t = alpha(t) x_0 + sigma(t) eps``: the same family, indexed differently. A
continuous ``t`` is sent to the *fractional* timestep ``tau`` at which ``log abar`` (interpolated
linearly between the scheduler's timesteps) equals ``log alpha(t)^2``, and the network is called at
``tau`` (its sinusoidal time embedding accepts non-integer timesteps). The network then sees
exactly the noise level it was trained on, and the score is ``-eps / sigma(t)``. Times whose noise
level lies outside the scheduler's range (below its first step: ``t`` under about ``1e-3`` for the
default schedule) are clamped to the nearest timestep; ``t = 1`` maps to ``tau ~ 995.6``, the last
four timesteps being noisier than the VP-SDE ever gets.

How close the schedules are. diffusers' default linear schedule (``beta_start = 1e-4``,
``beta_end = 0.02``, 1,000 steps) is the discretisation of ``beta_min = 0.1, beta_max = 20``: at the
scheduler's timesteps ``n``, ``abar_n`` and ``alpha((n + 1) / 1000)^2`` differ by at most
``8.1e-4`` (absolute, near ``n = 140``) and by at most 7 % relatively (near ``t = 1``, where the
product of ``1 - beta_n`` falls below the exponential of its integral), as
``tests/test_adapters.py`` measures; so ``tau ~ 1000 t - 1``. Matching noise levels, not times,
makes the score exact for the scheduler's schedule either way.
"""
from __future__ import annotations

import torch
from torch import nn

from .score import NetworkScore
from .sde import VPSDE

__all__ = ["DiffusersEpsNet", "from_diffusers", "continuous_to_timestep", "schedule_mismatch"]

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _log_abar(scheduler) -> torch.Tensor:
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    if abar.ndim != 1 or len(abar) < 2 or not bool(((abar > 0) & (abar <= 1)).all()):
        raise ValueError("scheduler.alphas_cumprod must be a 1-d sequence of values in (0, 1]")
    return abar.log()


def continuous_to_timestep(t, scheduler, sde: VPSDE) -> torch.Tensor:
    """The fractional timestep ``tau`` of ``scheduler`` whose noise level is the VP-SDE's at ``t``.

    ``log abar(tau) = log alpha(t)^2``, with ``log abar`` interpolated linearly between timesteps;
    clamped to ``[0, len(abar) - 1]``. ``t`` may be a float or a tensor; the result is float64.
    """
    log_abar = _log_abar(scheduler)                                   # decreasing in n
    target = 2 * torch.log(torch.as_tensor(sde.alpha(torch.as_tensor(t, dtype=torch.float64))))
    target = target.clamp(min=float(log_abar[-1]), max=float(log_abar[0]))
    flipped = log_abar.flip(0)                                        # increasing
    hi = torch.searchsorted(flipped, target.reshape(-1)).clamp(1, len(flipped) - 1)
    lo = hi - 1
    frac = (target.reshape(-1) - flipped[lo]) / (flipped[hi] - flipped[lo])
    position = lo + frac                                              # in the flipped index
    return ((len(flipped) - 1) - position).reshape(target.shape)


class DiffusersEpsNet(nn.Module):
    """``net(x, t) -> eps``: a diffusers UNet2DModel at continuous VP-SDE time ``t`` (see the module).

    Converts the scheduler's ``prediction_type`` (``"epsilon"``, ``"v_prediction"``, ``"sample"``)
    to a noise prediction. ``forward(x, t, label)`` passes ``label`` as ``class_labels`` to a
    class-conditional UNet (``num_class_embeds`` set), which :class:`~mempkg.score.NetworkScore`
    does for a ``label``.
    """

    def __init__(self, unet, scheduler, sde: VPSDE):
        super().__init__()
        config = getattr(unet, "config", None)
        if not isinstance(unet, nn.Module) or config is None or not hasattr(config, "sample_size"):
            raise ValueError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}")
        prediction = getattr(getattr(scheduler, "config", None), "prediction_type", None)
        if prediction not in PREDICTIONS:
            raise ValueError(f"scheduler must be a diffusers DDPM/DDIM scheduler with prediction_type in "
                             f"{PREDICTIONS}, got {prediction!r}")
        self.log_abar = _log_abar(scheduler)
        self.unet, self.scheduler, self.sde, self.prediction = unet, scheduler, sde, prediction
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (config.in_channels, *size)
        self.n_classes = getattr(config, "num_class_embeds", None)

    def forward(self, x: torch.Tensor, t, label=None) -> torch.Tensor:
        if self.n_classes is not None and label is None:
            raise ValueError("this UNet is class-conditional: give a label (NetworkScore(..., label=c))")
        tt = torch.as_tensor(t, dtype=torch.float64)
        tau = continuous_to_timestep(tt, self.scheduler, self.sde).to(x.device)
        tau = tau.expand(x.shape[0]) if tau.ndim == 0 or tau.numel() == 1 else tau
        labels = None if label is None else torch.as_tensor(label, device=x.device).expand(x.shape[0])
        # the math kernel of attention: the fused CPU kernel has no forward-mode derivative (JVPs)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            out = self.unet(x, tau.to(x.dtype), class_labels=labels).sample
        if self.prediction == "epsilon":
            return out
        log_abar = torch.as_tensor(self._interp_log_abar(tau), dtype=x.dtype, device=x.device)
        a = log_abar.exp().sqrt().reshape(-1, *([1] * (x.ndim - 1)))
        s = (1 - log_abar.exp()).sqrt().reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction == "v_prediction":                          # v = a eps - s x0
            return a * out + s * x
        return (x - a * out) / s                                         # "sample": out is x0

    def _interp_log_abar(self, tau: torch.Tensor) -> torch.Tensor:
        tau = tau.double().cpu()
        lo = tau.floor().long().clamp(0, len(self.log_abar) - 2)
        frac = tau - lo
        return self.log_abar[lo] * (1 - frac) + self.log_abar[lo + 1] * frac


def from_diffusers(unet, scheduler, sde: VPSDE | None = None, label=None) -> NetworkScore:
    """A diffusers ``UNet2DModel`` with its DDPM/DDIM scheduler as a score ``score(x, t)`` of the VP-SDE.

    Parameters
    ----------
    unet : diffusers ``UNet2DModel`` (e.g. ``UNet2DModel.from_pretrained(folder, subfolder="unet")``)
    scheduler : diffusers ``DDPMScheduler`` or ``DDIMScheduler`` (its ``alphas_cumprod`` and
        ``prediction_type`` are used)
    sde : VPSDE, default ``VPSDE()`` (``beta_min = 0.1, beta_max = 20``, which diffusers' default
        linear schedule discretises; see the module docstring for the measured difference)
    label : int, optional, for a class-conditional UNet

    Returns
    -------
    :class:`~mempkg.score.NetworkScore` with the ``"eps"`` reading, so FLIPD uses its better-
    conditioned noise form. Call ``unet.eval()`` first; gradients flow (autograd, ``torch.func``).
    """
    sde = sde or VPSDE()
    net = DiffusersEpsNet(unet, scheduler, sde)
    if label is not None and net.n_classes is None:
        raise ValueError("label was given but the UNet is not class-conditional (num_class_embeds unset)")
    if label is not None and not 0 <= int(label) < net.n_classes:
        raise ValueError(f"label must lie in 0..{net.n_classes - 1}, got {label!r}")
    return NetworkScore(net, sde, "eps", label=label)


def schedule_mismatch(scheduler, sde: VPSDE | None = None, relative: bool = False) -> float:
    """``max_n |abar_n - alpha((n + 1) / N)^2|``: how far a scheduler is from the VP-SDE's grid.

    With ``relative``, ``max_n |log abar_n - log alpha((n + 1) / N)^2|`` instead.
    """
    sde = sde or VPSDE()
    log_abar = _log_abar(scheduler)
    n = len(log_abar)
    log_vp = 2 * torch.log(sde.alpha(torch.arange(1, n + 1, dtype=torch.float64) / n))
    if relative:
        return float((log_abar - log_vp).abs().max())
    return float((log_abar.exp() - log_vp.exp()).abs().max())
