"""Other libraries' diffusion models as the book's score functions.

:func:`from_diffusers` reads a Hugging Face ``diffusers`` ``UNet2DModel`` and its ``DDPMScheduler``
or ``DDIMScheduler`` (a discrete-time noise-prediction network, called as ``unet(x, n).sample``) as a
:class:`~mempkg.score.NetworkScore` of the continuous-time VP-SDE, so every estimator of the package
(volume growth, FLIPD, the normal bundle, the samplers, the audit) runs on it unchanged.
``diffusers`` is an optional extra (``pip install -e '.[diffusers]'``) imported only here, on use.

How time is mapped. The scheduler noises as ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps``
(``abar = scheduler.alphas_cumprod``, the training timesteps ``n = 0, ..., N - 1``), the VP-SDE as
``x_t = alpha(t) x_0 + sigma(t) eps`` with ``alpha(t)^2 + sigma(t)^2 = 1``: the same family of
kernels, indexed differently. Time is therefore matched through the *noise level*, not through
``n = N t``: a continuous ``t`` is sent to the fractional timestep ``tau`` at which ``log abar``,
interpolated linearly between consecutive timesteps, equals ``log alpha(t)^2``
(:func:`continuous_to_timestep`), and the network is called at ``tau`` (the default ``"positional"``
sinusoidal time embedding is smooth in its timestep). At the scheduler's own timesteps the map is
exact: ``tau = n`` where ``alpha(t)^2 = abar_n``, and the score is then exactly
``-unet(x, n).sample / sqrt(1 - abar_n)``. In between, the network is read at an interpolated
timestep it was not trained on but whose noise level is the VP-SDE's. Interpolating rather than
picking the nearest timestep keeps ``score(x, t)`` continuous in ``t`` (the ODE integrators and
FLIPD's ``t0`` sweeps need that); the nearest timestep of ``n = 1000 t - 1`` would miss
``alpha(t)^2`` by up to ``2.1e-3`` in ``abar``.

Whose score it is. The returned score belongs to mempkg's ``sde`` (its time variable ``t``): at
``t`` it is ``-eps_hat / sigma(t)``, the network's score of the data noised to ``alpha(t)^2``,
whichever VP-SDE is passed; the scheduler's schedule only decides which timestep embedding
carries that noise level. Give the estimators the same ``sde`` (it is ``score.sde``). Noise levels
outside the scheduler's range are clamped to its first or last timestep, so the network is then
read at the wrong noise level: ``score.net.t_range`` is the interval of ``t`` where no clamping
happens (for the default schedule ``[9.2e-4, 1]``; ``t = 1`` maps to ``tau ~ 995.6``, the last four
timesteps being noisier than ``VPSDE()`` ever gets). :func:`vpsde_for` gives the VP-SDE that a
linear schedule discretises.

How close the schedules are. diffusers' default linear schedule (``beta_start = 1e-4``,
``beta_end = 0.02``, 1,000 steps) is the discretisation of ``beta_min = 0.1, beta_max = 20``
(``N beta_n = beta(n / (N - 1))``): at the scheduler's timesteps ``n``, ``abar_n`` and
``alpha((n + 1) / 1000)^2`` differ by at most ``8.1e-4`` (absolute, near ``n = 141``) and by at most
7 % relatively (near ``t = 1``, where the product of ``1 - beta_n`` falls below the exponential of
its integral by ``exp(-sum beta_n^2 / 2)``), as :func:`schedule_mismatch` and
``tests/test_adapters.py`` measure; so ``tau ~ 1000 t - 1``, within 3.4 timesteps. Matching noise
levels, not times, makes the score exact for the network whatever that difference.
"""
from __future__ import annotations

import torch
from torch import nn

from .score import NetworkScore
from .sde import VPSDE

__all__ = ["DiffusersEpsNet", "from_diffusers", "continuous_to_timestep", "schedule_mismatch", "vpsde_for"]

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _import_diffusers():
    try:
        import diffusers
    except ImportError as exc:       # nobody can hold a UNet2DModel then, but say how to get one
        raise ImportError("mempkg.adapters needs diffusers: pip install -e '.[diffusers]'") from exc
    return diffusers


def _log_abar(scheduler) -> torch.Tensor:
    """``log scheduler.alphas_cumprod`` in float64 on the CPU, checked."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"scheduler must be a diffusers DDPMScheduler or DDIMScheduler (with alphas_cumprod), "
                         f"got {type(scheduler).__name__}")
    abar = torch.as_tensor(abar).detach().to("cpu", torch.float64)
    if (abar.ndim != 1 or len(abar) < 2 or not bool(((abar > 0) & (abar <= 1)).all())
            or not bool((abar.diff() < 0).all())):
        raise ValueError("scheduler.alphas_cumprod must be a 1-d, strictly decreasing sequence of values in (0, 1]")
    return abar.log()


def _check_scheduler(scheduler) -> tuple[str, torch.Tensor]:
    """The scheduler's ``prediction_type`` and ``log alphas_cumprod``, or a ``ValueError`` naming ``scheduler``."""
    prediction = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if prediction not in PREDICTIONS:
        raise ValueError(f"scheduler must be a diffusers DDPMScheduler or DDIMScheduler with prediction_type in "
                         f"{PREDICTIONS}, got {type(scheduler).__name__} with prediction_type {prediction!r}")
    return prediction, _log_abar(scheduler)


def _check_unet(unet) -> None:
    """Raise ``ValueError`` naming ``unet`` unless it is a UNet2DModel this adapter can call at fractional timesteps."""
    diffusers = _import_diffusers()
    if not isinstance(unet, diffusers.UNet2DModel):
        raise ValueError(f"unet must be a diffusers UNet2DModel (called as unet(x, timestep).sample), "
                         f"got {type(unet).__name__}")
    config = unet.config
    if config.time_embedding_type != "positional":
        raise ValueError(f"unet must embed timesteps with time_embedding_type='positional' (a DDPM/DDIM UNet), got "
                         f"{config.time_embedding_type!r}: 'learned' takes integer timesteps only, 'fourier' a VE "
                         "SDE's noise scale")
    if getattr(unet, "class_embedding", None) is not None and config.num_class_embeds is None:
        raise ValueError(f"unet is conditioned through class_embed_type={config.class_embed_type!r}; only class "
                         "labels (num_class_embeds) are supported")


def continuous_to_timestep(t, scheduler, sde: VPSDE) -> torch.Tensor:
    """The fractional timestep ``tau`` of ``scheduler`` whose noise level is the VP-SDE's at ``t``.

    Parameters
    ----------
    t : float or tensor of any shape, in [0, 1]
    scheduler : diffusers DDPM/DDIM scheduler (its ``alphas_cumprod``, length ``N``)
    sde : VPSDE

    Returns
    -------
    float64 CPU tensor shaped like ``t``: ``tau`` with ``log abar(tau) = log alpha(t)^2 = -2 m(t)``,
    ``log abar`` interpolated linearly between timesteps, clamped to ``[0, N - 1]`` (see the
    module docstring for the clamping and ``DiffusersEpsNet.t_range``).
    """
    log_abar = _log_abar(scheduler)                                   # decreasing in n
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64)
    target = -2.0 * sde.m(tt)                                         # log alpha(t)^2
    target = target.clamp(min=float(log_abar[-1]), max=float(log_abar[0]))
    flipped = log_abar.flip(0)                                        # increasing
    hi = torch.searchsorted(flipped, target.reshape(-1)).clamp(1, len(flipped) - 1)
    lo = hi - 1
    frac = (target.reshape(-1) - flipped[lo]) / (flipped[hi] - flipped[lo])
    position = lo + frac                                              # in the flipped index
    return ((len(flipped) - 1) - position).reshape(target.shape)


def _t_range(log_abar: torch.Tensor, sde: VPSDE) -> tuple[float, float]:
    """The times ``t`` whose noise level ``alpha(t)^2`` lies within ``[abar_{N-1}, abar_0]``."""
    m_max = sde.m(1.0)
    low = sde.t_of_m(min(-0.5 * float(log_abar[0]), m_max))
    high = sde.t_of_m(min(-0.5 * float(log_abar[-1]), m_max))
    return low, high


class DiffusersEpsNet(nn.Module):
    """``net(x, t) -> eps``: a diffusers UNet2DModel at continuous VP-SDE time ``t`` (see the module).

    Converts the scheduler's ``prediction_type`` (``"epsilon"``, ``"v_prediction"``, ``"sample"``)
    to a noise prediction with the scheduler's ``abar`` at ``tau`` (which is ``alpha(t)^2`` inside
    :attr:`t_range`). ``forward(x, t, label)`` passes ``label`` as ``class_labels`` to a
    class-conditional UNet (``num_class_embeds`` set), which :class:`~mempkg.score.NetworkScore`
    does for a ``label``. The output has the dtype and device of ``x`` (the UNet runs in its own
    dtype; put it on ``x``'s device first).

    Attributes
    ----------
    data_shape : ``(C, H, W)`` of the UNet's ``in_channels`` and ``sample_size``
    n_classes : int or None, the UNet's ``num_class_embeds``
    t_range : ``(t_min, t_max)``, the times whose noise level the scheduler covers
    """

    def __init__(self, unet, scheduler, sde: VPSDE):
        super().__init__()
        prediction, log_abar = _check_scheduler(scheduler)
        _check_unet(unet)
        self.unet, self.scheduler, self.sde, self.prediction = unet, scheduler, sde, prediction
        self.log_abar = log_abar
        config = unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (config.in_channels, *size)
        self.n_classes = config.num_class_embeds
        self.t_range = _t_range(log_abar, sde)

    def forward(self, x: torch.Tensor, t, label=None) -> torch.Tensor:
        if self.n_classes is not None and label is None:
            raise ValueError("label: this UNet is class-conditional, give a label (from_diffusers(..., label=c))")
        tau = continuous_to_timestep(t, self.scheduler, self.sde).reshape(-1)
        if tau.numel() == 1:
            tau = tau.expand(x.shape[0])
        elif tau.numel() != x.shape[0]:
            raise ValueError(f"t must be a float or a tensor of shape (batch,) = ({x.shape[0]},), "
                             f"got {tuple(tau.shape)}")
        labels = None if label is None else torch.as_tensor(label, device=x.device).expand(x.shape[0])
        # the math kernel of attention: the fused CPU kernel has no forward-mode derivative (JVPs)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            out = self.unet(x.to(self.unet.dtype), tau.to(x.device, torch.float32), class_labels=labels).sample
        out = out.to(x.dtype)
        if self.prediction == "epsilon":
            return out
        abar = self._interp_log_abar(tau).exp().to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a, s = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction == "v_prediction":                          # v = a eps - s x0
            return a * out + s * x
        return (x - a * out) / s                                         # "sample": out is x0

    def _interp_log_abar(self, tau: torch.Tensor) -> torch.Tensor:
        lo = tau.floor().long().clamp(0, len(self.log_abar) - 2)
        frac = tau - lo
        return self.log_abar[lo] * (1 - frac) + self.log_abar[lo + 1] * frac


def from_diffusers(unet, scheduler, sde: VPSDE | None = None, label=None) -> NetworkScore:
    """A diffusers ``UNet2DModel`` with its DDPM/DDIM scheduler as a score ``score(x, t)`` of the VP-SDE.

    ``score(x, t) = -eps_hat(x, tau(t)) / sigma(t)``, the network's ``grad_x log p_t(x)`` at the
    VP-SDE's noise level ``alpha(t)^2``, with ``tau(t)`` the fractional timestep of the same noise
    level (module docstring, :func:`continuous_to_timestep`).

    Parameters
    ----------
    unet : diffusers ``UNet2DModel`` (e.g. ``UNet2DModel.from_pretrained(folder, subfolder="unet")``),
        with the default ``"positional"`` time embedding; call ``unet.eval()`` first
    scheduler : diffusers ``DDPMScheduler`` or ``DDIMScheduler`` (its training ``alphas_cumprod`` and
        ``prediction_type``, one of ``"epsilon"``, ``"v_prediction"``, ``"sample"``, are used; the
        inference ``timesteps`` of ``set_timesteps`` are not)
    sde : VPSDE, default ``VPSDE()`` (``beta_min = 0.1, beta_max = 20``, which diffusers' default
        linear schedule discretises to within ``8.1e-4`` in ``abar``; see the module docstring)
    label : int or tensor ``(batch,)`` of ints, required for a class-conditional UNet
        (``num_class_embeds`` set) and refused otherwise

    Returns
    -------
    :class:`~mempkg.score.NetworkScore` with the ``"eps"`` reading (so FLIPD uses its
    better-conditioned noise form) of a :class:`DiffusersEpsNet`; ``score(x, t)`` takes ``x`` of
    shape ``(batch, C, H, W)`` and ``t`` a float or ``(batch,)`` tensor in (0, 1], and returns the
    shape, dtype and device of ``x``. Gradients flow (autograd, ``torch.func``).
    ``score.net.t_range`` is where no timestep is clamped.

    Raises
    ------
    ValueError
        Naming ``unet``, ``scheduler`` or ``label``, before the network is run: not a UNet2DModel
        (or one with learned/Fourier time embeddings), a scheduler without ``alphas_cumprod`` or
        with another ``prediction_type``, a class-conditional UNet without a label (or a label for
        an unconditional one, or out of range).

    References
    ----------
    Ho et al. (2020), Eq. 4 (``abar``); Song et al. (2021), Appendix B (DDPM as the discretised
    VP-SDE); seed 000, Eqs. 4-6.
    """
    sde = sde or VPSDE()
    net = DiffusersEpsNet(unet, scheduler, sde)
    if net.n_classes is None:
        if label is not None:
            raise ValueError("label was given but the UNet is not class-conditional (num_class_embeds unset)")
    else:
        if label is None:
            raise ValueError(f"label: the UNet is class-conditional ({net.n_classes} classes), "
                             "give label=c (an int or a (batch,) tensor)")
        labels = torch.as_tensor(label)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.ndim > 1:
            raise ValueError(f"label must be an int or a 1-d tensor of ints, got {label!r}")
        if labels.numel() and not bool(((labels >= 0) & (labels < net.n_classes)).all()):
            raise ValueError(f"label must lie in 0..{net.n_classes - 1}, got {label!r}")
    return NetworkScore(net, sde, "eps", label=label)


def schedule_mismatch(scheduler, sde: VPSDE | None = None, relative: bool = False) -> float:
    """How far a scheduler's noise levels are from the VP-SDE's on its grid.

    Returns ``max_n |abar_n - alpha((n + 1) / N)^2|`` over the ``N`` training timesteps, or with
    ``relative`` ``max_n |log abar_n - log alpha((n + 1) / N)^2|``. The pairing ``n <-> (n + 1) / N``
    is the one under which ``abar_n`` (the product of ``1 - beta_i`` up to ``i = n``, ``n + 1``
    factors) discretises ``exp(-int_0^t beta)``; it gives ``8.1e-4`` for the default schedule
    (``n / N`` gives ``2.3e-3``).
    """
    sde = sde or VPSDE()
    log_abar = _log_abar(scheduler)
    n = len(log_abar)
    log_vp = -2.0 * sde.m(torch.arange(1, n + 1, dtype=torch.float64) / n)
    if relative:
        return float((log_abar - log_vp).abs().max())
    return float((log_abar.exp() - log_vp.exp()).abs().max())


def vpsde_for(scheduler) -> VPSDE:
    """The VP-SDE a linear-beta scheduler discretises: ``VPSDE(N beta_start, N beta_end)``.

    ``N beta_n = beta_min + n / (N - 1) (beta_max - beta_min)``: diffusers' default
    (``1e-4, 0.02``, ``N = 1000``) gives ``VPSDE(0.1, 20)``. Raises ``ValueError`` naming
    ``scheduler`` for other ``beta_schedule``s (``"scaled_linear"``, ``"squaredcos_cap_v2"``) or
    given ``trained_betas``; :func:`from_diffusers` works with any VP-SDE regardless.
    """
    config = getattr(scheduler, "config", None)
    schedule = getattr(config, "beta_schedule", None)
    if schedule != "linear" or getattr(config, "trained_betas", None) is not None:
        raise ValueError(f"scheduler must have beta_schedule='linear' (and no trained_betas) to be a VPSDE's "
                         f"discretisation, got beta_schedule={schedule!r}")
    n = config.num_train_timesteps
    return VPSDE(beta_min=n * config.beta_start, beta_max=n * config.beta_end)
