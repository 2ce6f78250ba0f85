"""Denoising score matching with the VP-SDE: seeded, resumable training of small score networks.

The loss is the denoising score-matching objective of Song et al. (2021) (seed 000, the
"Score-Based Generative Models" section), in one of two parameterisations:

* ``"eps"``: ``E |eps_hat(x_t, t) - eps|^2`` (Ho et al. 2020; uniform weight in eps);
* ``"x0"``: ``E w(t) |x0_hat(x_t, t) - x0|^2 / (mean over pixels)`` with
  ``w(t) = min(SNR(t), snr_cap)``, ``SNR = alpha^2 / v`` (the "min-SNR" weighting of Hang et al.
  2023). Both are minimised by the exact score of the training set
  (:class:`mempkg.score.EmpiricalScore`); they differ in how fast a small network gets there.

with ``t ~ U(t_min, 1)`` and ``x_t = alpha(t) x0 + sigma(t) eps``. Every random draw comes from one
``torch.Generator`` whose state is checkpointed, so an interrupted run resumed from its
checkpoint follows the same path as an uninterrupted one (on the same machine and thread count).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ._checks import check_choice, check_positive, check_positive_int, no_other_kwargs, renamed_argument
from ._random import rand, randn
from .score import PARAMETERIZATIONS
from .sde import VPSDE

__all__ = ["TrainConfig", "dsm_loss", "train_score_model"]


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a denoising score-matching run (validated when built).

    Attributes
    ----------
    n_steps : int, total optimisation steps (a resumed run continues up to this number)
    batch_size : int, examples per step, drawn uniformly with replacement
    lr : float, Adam learning rate
    parameterization : {"eps", "x0"}, see :func:`dsm_loss`; read the trained network with a
        :class:`~mempkg.score.NetworkScore` of the same parameterization (both default to "eps")
    snr_cap : float, cap of the SNR weight for ``"x0"``
    t_min : float in (0, 1), smallest training time
    seed : int, seeds the generator of every random draw (the network's initialisation is the
        caller's: seed before building the net)
    label_dropout : float in [0, 1), for class-conditional training: the probability that a label is
        replaced by the null class, so one network learns the conditional and the unconditional
        score (classifier-free guidance, Ho & Salimans 2022)
    lr_schedule : {"constant", "cosine"}; ``"cosine"`` decays the rate from ``lr`` to 0 over
        ``n_steps`` (a converged end state, less sensitive to where training stops)
    """

    n_steps: int
    batch_size: int = 128
    lr: float = 1e-3
    parameterization: str = "eps"
    snr_cap: float = 5.0
    t_min: float = 1e-3
    seed: int = 0
    label_dropout: float = 0.1
    lr_schedule: str = "constant"

    def __post_init__(self):
        check_positive_int(self.n_steps, "n_steps")
        check_positive_int(self.batch_size, "batch_size")
        check_positive(self.lr, "lr")
        check_choice(self.parameterization, "parameterization", PARAMETERIZATIONS)
        check_choice(self.lr_schedule, "lr_schedule", ("constant", "cosine"))
        check_positive(self.snr_cap, "snr_cap")
        if not (isinstance(self.t_min, (int, float)) and 0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


def dsm_loss(net, x0: torch.Tensor, sde: VPSDE, parameterization: str = "eps", snr_cap: float = 5.0,
             t_min: float = 1e-3, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
             **deprecated) -> torch.Tensor:
    """Denoising score-matching loss on a batch ``x0`` (a scalar tensor).

    Draws ``t ~ U(t_min, 1)`` and ``eps ~ N(0, I)`` per example with ``generator``; ``labels`` are
    the class labels of a class-conditional network (``None`` for an unconditional one; ``y`` in
    versions up to 0.1).
    """
    if "y" in deprecated:
        labels = renamed_argument(deprecated, "y", "labels", "dsm_loss", labels)
    no_other_kwargs(deprecated, "dsm_loss")
    check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
    b = x0.shape[0]
    t = t_min + (1 - t_min) * rand((b,), generator, x0.dtype, x0.device)
    eps = randn(x0.shape, generator, x0.dtype, x0.device)
    xt = sde.perturb(x0, t, noise=eps)
    out = net(xt, t) if labels is None else net(xt, t, labels)
    per_example = ((out - (eps if parameterization == "eps" else x0)) ** 2).reshape(b, -1).mean(1)
    if parameterization == "x0":
        snr = sde.alpha(t) ** 2 / sde.v(t)
        per_example = per_example * torch.clamp(snr, max=snr_cap)
    return per_example.mean()


def _save(path: Path, net, optimizer, step, generator, history, config):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "generator": generator.get_state(), "history": history, "config": config}, tmp)
    tmp.replace(path)


def train_score_model(
    net: torch.nn.Module,
    data: torch.Tensor,
    sde: VPSDE,
    config: TrainConfig | None = None,
    *,
    labels: torch.Tensor | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 100,
    **settings,
) -> list[tuple[int, float]]:
    """Train ``net`` in place by denoising score matching on ``data``; return the loss history.

    Parameters
    ----------
    net : torch.nn.Module mapping ``(x, t)`` to a tensor shaped like ``x``
    data : tensor ``(n, *data_shape)``, the training set (on the device to train on)
    sde : VPSDE
    config : TrainConfig
        What to train: steps, batch, learning rate, parameterization, seed, ... Instead of a
        config, its fields may be given as keywords (``n_steps=..., lr=...``), or the number of
        steps followed by the other fields as keywords.
    labels : long tensor ``(n,)``, optional
        Class labels for a class-conditional network (``MLPScoreNet(n_classes=...)``); each is
        replaced by the null class with probability ``config.label_dropout``.
    checkpoint : path, optional
        Where to save ``{model, optimizer, step, generator, history}`` every
        ``checkpoint_every`` steps and at the end. With ``resume=True`` an existing checkpoint
        is loaded first and training continues from its step (it must have been made with the
        same settings).
    progress : bool, show a progress bar with the running loss
    log_every : int, record the mean loss every this many steps in the history

    Returns
    -------
    list of ``(step, mean loss over the last log_every steps)``.
    """
    if isinstance(config, int) and not isinstance(config, bool):      # train_score_model(net, data, sde, n_steps, ...)
        config = TrainConfig(config, **settings)
    elif config is None:
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError(f"give either config or its fields as keywords, not both (got {', '.join(sorted(settings))})")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    log_every = check_positive_int(log_every, "log_every")
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] == 0:
        raise ValueError("data must be a tensor of shape (n, *data_shape) with n >= 1")
    if labels is not None:
        if getattr(net, "n_classes", None) is None:
            raise ValueError("labels were given but the network is not class-conditional (n_classes=None)")
        if labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        labels = labels.to(data.device)
    state = _start(net, data, config, labels, checkpoint, resume)
    history = _loop(net, data, sde, config, labels, state, checkpoint, checkpoint_every, progress, log_every)
    net.eval()
    return history


def _run_record(config: TrainConfig, data: torch.Tensor, labels) -> dict:
    """What a checkpoint records of its run; a resumed run must match it (``n_steps`` aside)."""
    return dict(n_steps=config.n_steps, batch_size=config.batch_size, lr=config.lr,
                parameterization=config.parameterization, snr_cap=config.snr_cap, t_min=config.t_min,
                seed=config.seed, n_data=int(data.shape[0]),
                label_dropout=config.label_dropout if labels is not None else None, lr_schedule=config.lr_schedule)


def _start(net, data, config, labels, checkpoint, resume) -> dict:
    """Optimiser, generator, step and history: fresh, or restored from ``checkpoint``."""
    generator = torch.Generator(device=data.device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    record = _run_record(config, data, labels)
    state = dict(generator=generator, optimizer=optimizer, record=record, step=0, history=[])
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and path.exists():
        saved_state = torch.load(path, map_location=data.device, weights_only=False)
        saved = {k: v for k, v in saved_state["config"].items() if k != "n_steps"}
        asked = {k: v for k, v in record.items() if k != "n_steps"}
        if saved != asked:
            raise ValueError(f"checkpoint {path} was made with other settings {saved}, not {asked}: "
                             "use another checkpoint path or resume=False")
        net.load_state_dict(saved_state["model"])
        optimizer.load_state_dict(saved_state["optimizer"])
        generator.set_state(saved_state["generator"])
        state.update(step=saved_state["step"], history=saved_state["history"])
    return state


def _loop(net, data, sde, config, labels, state, checkpoint, checkpoint_every, progress, log_every):
    """The optimisation loop: draw a batch, take one Adam step, log, checkpoint."""
    generator, optimizer = state["generator"], state["optimizer"]
    step, history = state["step"], state["history"]
    path = Path(checkpoint) if checkpoint is not None else None
    net.train()
    running, count = 0.0, 0
    bar = tqdm(total=config.n_steps, initial=step, disable=not progress, desc="training", leave=False)
    while step < config.n_steps:
        idx = torch.randint(data.shape[0], (config.batch_size,), generator=generator, device=data.device)
        y = None
        if labels is not None:
            y = labels[idx].clone()
            dropped = torch.rand(config.batch_size, generator=generator, device=data.device) < config.label_dropout
            y[dropped] = net.n_classes
        loss = dsm_loss(net, data[idx], sde, config.parameterization, config.snr_cap, config.t_min, generator,
                        labels=y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step + 1}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / config.n_steps))
        optimizer.step()
        step += 1
        running, count = running + loss.item(), count + 1
        if step % log_every == 0 or step == config.n_steps:
            history.append((step, running / count))
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
        bar.update(1)
        if path is not None and (step % checkpoint_every == 0 or step == config.n_steps):
            _save(path, net, optimizer, step, generator, history, state["record"])
    bar.close()
    return history
