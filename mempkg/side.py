"""SIDE: extracting training data from an unconditional diffusion model (seed 002, Section 4).

Chen et al. turn an unconditional model into a conditional one with a classifier, because
informative labels (Definition 3) tighten what the model generates around its training images.
The attacker has the model, not its training set. The pieces, each a function here:

* :func:`train_classifier` -- a classifier of clean images (the "normal", time-independent
  classifier, OL-TI), or of VP-noised images (``sde=...``: a time-dependent classifier trained on
  labelled data, the OL-TD ablation, which needs the training set);
* :func:`tdkd` -- time-dependent knowledge distillation (Eq. 13, App. E Eqs. 153-155): label a
  synthetic set drawn from the model with the normal classifier, then train a time-dependent
  student on VP-noised copies to match those labels (KL divergence). Its minimiser is the noisy
  posterior ``p^t(y | x_t) = E[p_teacher(y | x_0) | x_t]`` under the model's own samples;
* :class:`OracleClassifier` -- that minimiser in closed form over a finite synthetic set, an
  exact noisy posterior (a ceiling for TDKD at no training cost);
* :func:`side_sample` -- classifier-guided sampling, ``s + lambda grad log p^t(c | x)``
  (Eq. 12, via :class:`mempkg.score.GuidedScore`) with labels chosen per sample
  (:func:`draw_labels`), on the probability-flow ODE or the reverse SDE;
* :func:`accuracy_vs_time` -- a classifier's accuracy on VP-noised inputs: why TDKD exists;
* :func:`kmeans_labels`, :func:`random_labels` -- implicit labels (Section 4.1).

The metrics that judge the attack (AMS, UMS, Eqs. 14-15) live in :mod:`mempkg.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ._checks import check_choice, check_positive, check_positive_int, check_time
from .sampling import sample_ode, sample_sde
from .score import EmpiricalScore, GaussianScore, GuidedScore, MixtureScore
from .sde import VPSDE

__all__ = ["train_classifier", "tdkd", "OracleClassifier", "ClassPosterior", "draw_labels", "side_sample",
           "accuracy_vs_time", "kmeans_labels", "random_labels", "classifier_probs", "toy_memorizing_mixture",
           "LABEL_CHOICES"]

LABEL_CHOICES = ("balanced", "proportional", "uniform")
CLEAN_TIME = 1e-3       # the time at which time-dependent classifiers read clean images


def _shift(x: torch.Tensor, max_shift: int, generator) -> torch.Tensor:
    """Random integer translations by up to ``max_shift`` pixels (wrapping), one per image."""
    if max_shift == 0:
        return x
    out = torch.empty_like(x)
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1))
    return out


def _check_images_labels(x, labels, n_classes=None):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be images of shape (n, channels, height, width), got {getattr(x, 'shape', x)!r}")
    labels = torch.as_tensor(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got values {labels.min().item()}..{labels.max().item()}")
    return labels.long()


def train_classifier(net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, n_steps: int = 2000,
                     batch_size: int = 128, lr: float = 1e-3, max_shift: int = 1, sde: VPSDE | None = None,
                     t_min: float = 1e-3, seed: int = 0, progress: bool = True) -> list[tuple[int, float]]:
    """Train ``net`` (``net(x, t) -> logits``) in place by cross-entropy on ``(x, labels)``.

    Parameters
    ----------
    net : a classifier, e.g. :class:`mempkg.nets.ResNetClassifier`
    x : tensor ``(n, c, h, w)``; labels : long tensor ``(n,)``
    n_steps, batch_size, lr : AdamW steps (seed 002 uses AdamW; lr 1e-4 for its ResNet34, ours is
        small and trains faster at 1e-3)
    max_shift : int, random translations of up to this many pixels (light augmentation)
    sde : VPSDE, optional
        When given, each example is noised to a time ``t ~ U(t_min, 1)`` and the network gets ``t``:
        a time-dependent classifier of noisy images trained on the labelled set itself (OL-TD;
        Dhariwal & Nichol's noisy classifier). Without it, a normal classifier of clean images.
    seed : int, seeds every draw (the initialisation is the caller's)

    Returns
    -------
    list of ``(step, mean loss over the last 100 steps)``.
    """
    n_classes = getattr(net, "n_classes", None)
    labels = _check_images_labels(x, labels, n_classes).to(x.device)
    n_steps = check_positive_int(n_steps, "n_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    max_shift = check_positive_int(max_shift, "max_shift", allow_zero=True)
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    g = torch.Generator().manual_seed(seed)

    def batch_loss():
        idx = torch.randint(x.shape[0], (batch_size,), generator=g)
        xb = _shift(x[idx.to(x.device)], max_shift, g)
        t = None
        if sde is not None:
            t = (t_min + (1 - t_min) * torch.rand(batch_size, generator=g)).to(x)
            xb = sde.perturb(xb, t, noise=torch.randn(xb.shape, generator=g).to(xb))
        return torch.nn.functional.cross_entropy(net(xb, t), labels[idx.to(x.device)])

    return _fit(net, batch_loss, n_steps, lr, progress, "classifier")


def _fit(net: torch.nn.Module, batch_loss, n_steps: int, lr: float, progress: bool, desc: str):
    """AdamW on ``batch_loss()`` for ``n_steps``; the history of mean losses over each 100 steps."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    history, running = [], 0.0
    net.train()
    for step in tqdm(range(1, n_steps + 1), disable=not progress, desc=desc, leave=False):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if step % 100 == 0 or step == n_steps:
            history.append((step, running / (100 if step % 100 == 0 else step % 100)))
            running = 0.0
    net.eval()
    return history


@torch.no_grad()
def classifier_probs(classifier, x: torch.Tensor, t=None, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities ``softmax(classifier(x, t))`` of clean (``t=None``) or noisy images, in batches."""
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    out = [torch.softmax(classifier(x[i:i + batch_size], t), dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def tdkd(student: torch.nn.Module, teacher, synthetic: torch.Tensor, sde: VPSDE, n_steps: int = 4000,
         batch_size: int = 256, lr: float = 1e-3, t_min: float = 1e-3, soft: bool = True, seed: int = 0,
         progress: bool = True) -> list[tuple[int, float]]:
    """Time-dependent knowledge distillation (seed 002, Eq. 13; App. E, Eqs. 153-155).

    ``synthetic`` are samples of the target model (Eq. 153); the teacher labels them
    (``p_teacher(y | x)``, Eq. 154: soft probabilities by default, argmax with ``soft=False``), and the
    student is trained on VP-noised copies ``x_t = alpha(t) x + sigma(t) eps``, ``t ~ U(t_min, 1)``,
    to minimise ``KL(p_teacher(. | x) || p_student(. | x_t, t))`` (Eq. 155). The paper leaves the
    distribution of ``t`` and the number of steps open; these follow denoising score matching.

    The minimiser over all functions is ``p^t(y | x_t) = sum_i w_i(x_t) p_teacher(y | x_i)`` with the
    posterior weights of the synthetic set: exactly :class:`OracleClassifier`.

    Returns the loss history ``[(step, mean KL over the last 100 steps)]``.
    """
    if not isinstance(synthetic, torch.Tensor) or synthetic.ndim != 4 or synthetic.shape[0] < 2:
        raise ValueError("synthetic must be at least two images of shape (n, channels, height, width)")
    if not getattr(student, "time_dependent", True):
        raise ValueError("student must be a time-dependent classifier (time_dependent=True)")
    n_steps = check_positive_int(n_steps, "n_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    targets = classifier_probs(teacher, synthetic)
    if not soft:
        targets = torch.nn.functional.one_hot(targets.argmax(1), targets.shape[1]).to(targets)
    g = torch.Generator().manual_seed(seed)

    def batch_loss():
        idx = torch.randint(synthetic.shape[0], (batch_size,), generator=g).to(synthetic.device)
        t = (t_min + (1 - t_min) * torch.rand(batch_size, generator=g)).to(synthetic)
        noise = torch.randn(batch_size, *synthetic.shape[1:], generator=g).to(synthetic)
        log_q = torch.log_softmax(student(sde.perturb(synthetic[idx], t, noise=noise), t), dim=1)
        p = targets[idx]
        return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(1).mean()

    return _fit(student, batch_loss, n_steps, lr, progress, "TDKD")


class OracleClassifier:
    """The exact noisy posterior of a teacher's labels over a finite synthetic set (TDKD's optimum).

    ``log p^t(y | x) = logsumexp_i [ log w_i(x, t) + log p_teacher(y | x_i) ]`` with the posterior
    weights ``w_i`` of the noised empirical distribution of ``synthetic``
    (:meth:`mempkg.score.EmpiricalScore.posterior_weights`). Called as ``oracle(x, t)`` it returns
    these log-probabilities (valid logits); it is differentiable in ``x``, so it guides like any
    classifier.

    Parameters
    ----------
    synthetic : tensor ``(n, *data_shape)``, samples of the target model
    teacher_probs : tensor ``(n, n_classes)``, the teacher's class probabilities of each sample
    sde : VPSDE
    """

    def __init__(self, synthetic: torch.Tensor, teacher_probs: torch.Tensor, sde: VPSDE):
        if teacher_probs.ndim != 2 or teacher_probs.shape[0] != synthetic.shape[0]:
            raise ValueError(f"teacher_probs must have shape ({synthetic.shape[0]}, n_classes), got "
                             f"{tuple(teacher_probs.shape)}")
        self.n_classes = teacher_probs.shape[1]
        self.time_dependent = True
        hard = bool(((teacher_probs == 0) | (teacher_probs == 1)).all()) and bool((teacher_probs.sum(1) == 1).all())
        if hard:        # one-hot labels: sort the set by class, one log-sum-exp per class (O(n), not O(n C))
            labels = teacher_probs.argmax(1)
            order = labels.argsort(stable=True)
            synthetic, labels = synthetic[order], labels[order]
            self.sizes = torch.bincount(labels, minlength=self.n_classes).tolist()
            self.log_probs = None
        else:
            self.log_probs = torch.log(teacher_probs.clamp_min(1e-12))
        self.empirical = EmpiricalScore(synthetic, sde)

    @classmethod
    def from_labels(cls, synthetic: torch.Tensor, labels: torch.Tensor, sde: VPSDE, n_classes: int | None = None):
        """The oracle of hard labels (e.g. k-means clusters of the synthetic set, implicit labels)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
        return cls(synthetic, torch.nn.functional.one_hot(labels, n_classes).to(synthetic), sde)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        logits = self.empirical.logits(x, t)                                    # (batch, n)
        log_w = logits - logits.logsumexp(1, keepdim=True)
        if self.log_probs is None:
            empty = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
            return torch.stack([part.logsumexp(1) if part.shape[1] else empty
                                for part in log_w.split(self.sizes, dim=1)], dim=1)
        log_p = self.log_probs.to(dtype=x.dtype, device=x.device)
        return (log_w[:, :, None] + log_p[None]).logsumexp(1)                  # (batch, n_classes)


def draw_labels(n: int, n_classes: int, how: str = "balanced", probs: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels for ``n`` guided samples: how SIDE picks the class ``c`` of each generation.

    ``"balanced"``: round-robin over the classes (equal numbers, the default: seed 002 does not say);
    ``"proportional"``: drawn from ``probs`` (e.g. the model's own label frequencies; with the exact
    posterior and ``lambda = 1`` this reproduces the unconditional model, research notes 1.6);
    ``"uniform"``: drawn uniformly at random. The draws are made on ``generator``'s device (a CUDA
    generator draws on the GPU); the labels are returned on the CPU.
    """
    n = check_positive_int(n, "n")
    n_classes = check_positive_int(n_classes, "n_classes")
    check_choice(how, "how", LABEL_CHOICES)
    if how == "balanced":
        return torch.arange(n) % n_classes
    device = generator.device if generator is not None else "cpu"
    if how == "uniform":
        return torch.randint(n_classes, (n,), generator=generator, device=device).cpu()
    if probs is None or torch.as_tensor(probs).shape != (n_classes,):
        raise ValueError(f"probs must be a tensor of {n_classes} class probabilities for how='proportional'")
    probs = torch.as_tensor(probs, dtype=torch.float64).to(device)
    return torch.multinomial(probs, n, replacement=True, generator=generator).cpu()


class _CutOff:
    """A guided score that falls back to the plain score below ``t_min`` (classifier gradients blow up)."""

    def __init__(self, guided, score, t_min):
        self.guided, self.score, self.t_min = guided, score, t_min

    def __call__(self, x, t):
        tmin = float(t.min()) if isinstance(t, torch.Tensor) else float(t)
        return self.score(x, t) if tmin < self.t_min else self.guided(x, t)


def side_sample(score, classifier, labels, scale: float, n: int, sde: VPSDE, n_steps: int = 50,
                sampler: str = "ode", t_min_guidance: float = 2e-3, batch_size: int = 1000,
                generator: torch.Generator | None = None, dtype=torch.float32, device=None,
                progress: bool = False):
    """Draw ``n`` samples guided towards ``labels`` with strength ``scale`` (seed 002, Eq. 12).

    Each sample follows ``s(x, t) + scale * grad_x log softmax(classifier(x, t))[c]`` for its label
    ``c``; ``scale = 0`` is the unconditional model ("Random" in the paper's tables).

    Parameters
    ----------
    score : callable ``score(x, t)``, the target model
    classifier : callable ``classifier(x, t) -> logits (batch, n_classes)``; a time-independent one
        ignores ``t`` (OL-TI), a TDKD student or :class:`OracleClassifier` uses it (SIDE)
    labels : long tensor ``(n,)`` or int: the class of each sample (see :func:`draw_labels`)
    scale : float >= 0, lambda
    n : int, number of samples
    sde : VPSDE
    n_steps : int, steps of the sampler
    sampler : {"ode", "sde"}: Heun on the probability-flow ODE (default) or Euler-Maruyama on the
        reverse SDE (Eq. 12 is written as an SDE; the paper samples with DDIM)
    t_min_guidance : float, below this time the guidance is switched off (gradients of noisy
        classifiers blow up as t -> 0; the last steps only denoise)
    batch_size : int, samples drawn at once

    Returns
    -------
    tensor ``(n, *data_shape)``: the samples, in the order of ``labels``.
    """
    n = check_positive_int(n, "n")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    check_choice(sampler, "sampler", ("ode", "sde"))
    check_time(t_min_guidance, "t_min_guidance")
    batch_size = check_positive_int(batch_size, "batch_size")
    labels = torch.as_tensor(labels, dtype=torch.long)
    labels = labels.expand(n) if labels.ndim == 0 else labels
    if labels.shape != (n,):
        raise ValueError(f"labels must be an int or have shape ({n},), got {tuple(labels.shape)}")
    n_classes = getattr(classifier, "n_classes", None)
    if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    data_shape = tuple(getattr(score, "data_shape", ()))
    if not data_shape:
        raise ValueError("score must have a data_shape attribute (the shape of one sample)")
    draw = sample_ode if sampler == "ode" else sample_sde
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=f"SIDE (lambda={scale:g})", leave=False):
        lab = labels[start:start + batch_size].to(device)
        model = score if scale == 0 else _CutOff(GuidedScore(score, classifier, lab, scale), score, t_min_guidance)
        out.append(draw(model, (len(lab), *data_shape), sde, n_steps=n_steps, generator=generator, dtype=dtype,
                        device=device))
    return torch.cat(out)


@torch.no_grad()
def accuracy_vs_time(classifier, x: torch.Tensor, labels: torch.Tensor, sde: VPSDE, times,
                     generator: torch.Generator | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Accuracy of ``classifier`` on ``x`` noised to each of ``times`` (``t = 0``: clean images).

    A normal classifier sees only clean images; in Eq. 12 it is asked about ``x_t`` at every time,
    where it falls to chance (seed 002, Section 4.2). At ``t = 0`` a time-dependent classifier is
    given ``t = CLEAN_TIME`` (1e-3, the smallest training time). The noise is drawn with
    ``generator`` on its device (``x``'s device without one). Returns a tensor ``(len(times),)``.
    """
    labels = _check_images_labels(x, labels).to(x.device)
    accs = []
    for t in times:
        if t == 0:      # clean images; a time-dependent classifier reads them at its smallest time
            xt, tt = x, torch.full((x.shape[0],), CLEAN_TIME, dtype=x.dtype, device=x.device)
        else:
            check_time(t, "times")
            noise = torch.randn(x.shape, generator=generator,
                                device=generator.device if generator is not None else x.device).to(x)
            xt, tt = sde.perturb(x, t, noise=noise), torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        probs = classifier_probs(classifier, xt, tt if getattr(classifier, "time_dependent", False) else None,
                                 batch_size)
        accs.append((probs.argmax(1) == labels).double().mean().item())
    return torch.tensor(accs)


def kmeans_labels(x: torch.Tensor, n_clusters: int, seed: int = 0) -> torch.Tensor:
    """Implicit labels: k-means clusters of the flattened images (seed 002, Section 4.1)."""
    from sklearn.cluster import KMeans

    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if n_clusters > x.shape[0]:
        raise ValueError(f"n_clusters must be at most the number of images {x.shape[0]}, got {n_clusters}")
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(x.reshape(x.shape[0], -1).cpu().double().numpy())
    return torch.as_tensor(km.labels_, dtype=torch.long)


def random_labels(n: int, n_classes: int, seed: int = 0) -> torch.Tensor:
    """Random labels, balanced: informative by Definition 3, but unrelated to the images."""
    n = check_positive_int(n, "n")
    n_classes = check_positive_int(n_classes, "n_classes")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[perm] = torch.arange(n) % n_classes
    return out


class ClassPosterior:
    """The exact class posterior ``p_t(c | x)`` of a :class:`~mempkg.score.MixtureScore` whose
    components belong to classes, as a classifier: ``log sum_{k in c} r_k(x, t)``.

    ``component_classes[k]`` is the class of component ``k``; the responsibilities ``r_k`` come from
    the components' exact log-densities, so the result is differentiable and exact.
    """

    def __init__(self, mixture: MixtureScore, component_classes):
        self.mixture = mixture
        self.component_classes = torch.as_tensor(component_classes, dtype=torch.long)
        if self.component_classes.shape != (len(mixture.components),):
            raise ValueError(f"component_classes must give one class per component ({len(mixture.components)})")
        self.n_classes = int(self.component_classes.max()) + 1
        self.time_dependent = True

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        r = self.mixture.responsibilities(x, t)
        onehot = torch.nn.functional.one_hot(self.component_classes, self.n_classes).to(r)
        return torch.log((r @ onehot).clamp_min(1e-300))


@dataclass
class ToyModel:
    """A smooth density plus a memorized part, with exact class posteriors (see :func:`toy_memorizing_mixture`)."""

    score: MixtureScore
    classifier: ClassPosterior
    class_probs: torch.Tensor
    memorized: torch.Tensor


def toy_memorizing_mixture(n_classes: int = 3, per_class: int = 3, weight: float = 0.1, radius: float = 2.0,
                           std: float = 0.5, seed: int = 0) -> ToyModel:
    """A 2-D model ``(1 - w) sum_c N(mu_c, std^2 I) / C + w Emp(S)`` whose memorized points ``S`` are known.

    The class means sit on a circle of ``radius``; ``per_class`` memorized points per class are drawn
    from the class's Gaussian (seeded), each generated with probability ``w / |S|`` by the model (a
    copy, under the exact score). The class of every component is known, so ``p_t(c | x)`` is exact
    (:class:`ClassPosterior`): the setting in which seed 002's Eq. 12 can be checked.
    """
    n_classes = check_positive_int(n_classes, "n_classes")
    per_class = check_positive_int(per_class, "per_class")
    if not 0 < weight < 1:
        raise ValueError(f"weight must lie in (0, 1), got {weight!r}")
    sde = VPSDE()
    g = torch.Generator().manual_seed(seed)
    angles = math.pi / 2 + 2 * math.pi * torch.arange(n_classes, dtype=torch.float64) / n_classes
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    cov = std ** 2 * torch.eye(2, dtype=torch.float64)
    memorized = torch.cat([means[c] + std * torch.randn(per_class, 2, generator=g, dtype=torch.float64)
                           for c in range(n_classes)])
    components = [GaussianScore(means[c], cov, sde) for c in range(n_classes)]
    components += [EmpiricalScore(memorized[c * per_class:(c + 1) * per_class], sde) for c in range(n_classes)]
    weights = [(1 - weight) / n_classes] * n_classes + [weight / n_classes] * n_classes
    mixture = MixtureScore(components, weights)
    classes = list(range(n_classes)) * 2
    return ToyModel(mixture, ClassPosterior(mixture, classes), torch.full((n_classes,), 1 / n_classes), memorized)


def extraction_scores(gamma: torch.Tensor, nearest: torch.Tensor, bands: dict, n_boot: int = 1000,
                      seed: int = 0):
    """AMS and UMS (seed 002, Eqs. 14-15) of one arm at each level of ``bands``, with 95% intervals.

    ``gamma`` and ``nearest`` are each generation's similarity (or distance) to its matched
    training image and that image's index (e.g. :func:`mempkg.metrics.find_copies`' ``ratio`` and
    ``nearest``); ``bands`` maps a level name to ``(low, high)`` as :func:`mempkg.metrics.ams_ums`
    takes them. AMS intervals are Wilson's (a proportion); UMS intervals are percentiles of a
    bootstrap over the generations (``n_boot`` resamples, seeded), since the number of distinct
    matches is not binomial. Returns a DataFrame with one row per level.
    """
    import pandas as pd
    from scipy import stats

    from .metrics import ams_ums

    gamma, nearest = torch.as_tensor(gamma).cpu(), torch.as_tensor(nearest).cpu()  # a small bootstrap
    n = gamma.shape[0]
    g = torch.Generator().manual_seed(seed)
    boot = torch.randint(n, (check_positive_int(n_boot, "n_boot"), n), generator=g)
    rows = []
    for level, (low, high) in bands.items():
        ams, ums = ams_ums(gamma, nearest, low, high)
        k = round(ams * n)
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        ums_boot = torch.tensor([ams_ums(gamma[i], nearest[i], low, high)[1] for i in boot])
        rows.append({"level": level, "AMS": ams, "AMS low": ci.low, "AMS high": ci.high, "UMS": ums,
                     "UMS low": torch.quantile(ums_boot.double(), 0.025).item(),
                     "UMS high": torch.quantile(ums_boot.double(), 0.975).item(), "copies": k, "n": n})
    return pd.DataFrame(rows).set_index("level")
