"""Every memorization measure of the book, for each training image of one model (chapter 13, ``mempkg audit``).

The four papers each score training images (or generations) in their own way; this module puts
them side by side behind one call. :func:`measure_table` takes a score function, its training set
and the SDE and returns one row per training image and one column per measure, each oriented by
:data:`MEASURES` (``memorized="high"``: a larger value means more likely reproduced), together with
what each measure cost: seconds and score evaluations (rows passed to the score, JVPs included).

Measures that look at the model directly (volume growth, FLIPD, normal bundle) evaluate the score
at the training images. Measures that look at what the model *generates* (copies, distances,
retrieval similarities, local PCA of generations) share one pool of generations, drawn once with
:func:`mempkg.sampling.sample_ode` (or passed in as ``gen``). ``distance_to_mean`` is a negative
control: nothing in the papers predicts it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import lid, retrieval
from ._checks import check_positive_int
from .metrics import COPY_THRESHOLD, find_copies, nearest_neighbors
from .sampling import sample_ode
from .volume import volume_growth

__all__ = ["Measure", "MEASURES", "DEFAULT_MEASURES", "CountingScore", "generate_pool", "measure_table",
           "load_images", "load_score", "check_model_fits", "run_audit", "report_html", "write_report"]


class CountingScore:
    """Wrap ``score`` and count its evaluations: the cost of a measure.

    ``evaluations`` adds the rows of ``x`` of every call (and of ``predict_eps``, the epsilon
    reading FLIPD uses) and every tangent of a Jacobian-vector product
    (:func:`mempkg.score.score_jvp` reports them through :meth:`count_tangents`): a JVP along ``k``
    directions at ``b`` points counts ``b k``, its primal pass ``b``. A backward pass (FLIPD's
    Hutchinson probe) is not counted separately; it costs about two forward passes.
    """

    def __init__(self, score):
        self.score, self.evaluations = score, 0

    def __call__(self, x, t):
        self.evaluations += x.shape[0]
        return self.score(x, t)

    def count_tangents(self, n: int):
        self.evaluations += n

    def __getattr__(self, name):          # everything else (parameterization, jvp, devices) from the score
        attr = getattr(self.__dict__["score"], name)
        if name == "predict_eps" and callable(attr):
            def counted(x, *args, **kwargs):
                self.evaluations += x.shape[0]
                return attr(x, *args, **kwargs)
            return counted
        return attr


@dataclass(frozen=True)
class Measure:
    """One per-image measure: ``fn(ctx, x) -> (batch,)`` and its orientation.

    ``memorized`` is ``"high"`` or ``"low"``: which end marks a memorized image, fixed before any
    data is seen (from the paper that proposes the measure). ``needs_generations`` measures use the
    shared pool; ``source`` names the paper and equation.
    """

    fn: Callable
    memorized: str
    needs_generations: bool
    source: str


def _volume(ctx, x, **kw):
    out = volume_growth(ctx["score"], x, ctx["sde"], generator=ctx["generator"], **kw)
    return out.log_growth[:, -1]


def _cheap_volume(ctx, x):
    return _volume(ctx, x, n_axes=1, n_steps=1, method="jvp", t_start=ctx["t_start"], t_end=ctx["t_cheap"])


def _full_volume(ctx, x, method="qr"):
    return _volume(ctx, x, n_axes=ctx["n_axes"], n_steps=ctx["n_steps"], method=method, sigma=ctx["sigma"],
                   ode_method="heun", t_start=ctx["t_start"])


def _paper_volume(ctx, x):
    return _full_volume(ctx, x, method="paper")


def _step_volume(ctx, x):
    """All axes, one short step from ``alpha(t0) x`` at ``t0``: to first order FLIPD's trace term (chapter 13)."""
    d = x[0].numel() if ctx.get("step_axes") is None else ctx["step_axes"]
    t0 = ctx["t0"]
    return _volume(ctx, ctx["sde"].alpha(t0) * x, n_axes=d, n_steps=1, method="jvp", grid="uniform",
                   t_start=t0, t_end=t0 + 1e-4)


def _flipd(ctx, x):
    return lid.flipd(ctx["score"], x, ctx["sde"], t0=ctx["t0"], n_probes=ctx["n_probes"], generator=ctx["generator"])


def _normal_bundle(ctx, x):
    return lid.normal_bundle(ctx["score"], x, ctx["sde"], t0=ctx["t0_bundle"], n_samples=ctx.get("n_bundle"),
                             generator=ctx["generator"]).double()


def _nearest_generation(ctx, x):
    """Distance from each training image to its nearest generation (pixels)."""
    d, _ = nearest_neighbors(x, ctx["gen"], n_neighbors=1)
    return d[:, 0]


def _copies(ctx, x):
    """Generations whose nearest training image is this one, with Carlini's l below the threshold."""
    if "_copy_counts" not in ctx:           # one search over the pool, shared by the chunks
        train = ctx["train"]
        found = find_copies(ctx["gen"], train, ctx["threshold"], n_neighbors=min(50, len(train)))
        ctx["_copy_counts"] = torch.zeros(len(train), dtype=torch.long)
        ctx["_copy_counts"][found.memorized.cpu()] = found.counts.cpu()
    return ctx["_copy_counts"][ctx["index"]].double()


def _retrieval(similarity):
    def fn(ctx, x):
        if "_gen_feats" not in ctx:
            ctx["_gen_feats"] = ctx["extractor"](ctx["gen"].float())
        values, _ = retrieval.top1(ctx["extractor"](x.float()), ctx["_gen_feats"], similarity=similarity,
                                   normalize="chunk")
        return values.double()
    return fn


def _default_extractor(train):
    """Mean-centred pixels in 4x4 patches (:func:`mempkg.retrieval.pixel_extractor`) for images whose
    sides 4 divides; otherwise the centred vector as one chunk (split product = cosine then)."""
    center = train.float().mean(0).cpu()
    if center.ndim == 3 and center.shape[1] % 4 == 0 and center.shape[2] % 4 == 0:
        return retrieval.pixel_extractor(center=center)
    return retrieval.Extractor(lambda x: (x.float() - center.to(x.device)).flatten(1), "centred pixels")


def _lpca_generations(ctx, x):
    n = min(ctx["n_neighbors"], len(ctx["gen"]))
    return lid.lpca(ctx["gen"].reshape(len(ctx["gen"]), -1), x.reshape(len(x), -1), n_neighbors=n).double()


def _distance_to_mean(ctx, x):
    return (x - ctx["train"].mean(0)).flatten(1).norm(dim=1).double()


MEASURES: dict[str, Measure] = {
    "volume_growth_cheap": Measure(_cheap_volume, "high", False, "seed 000, Eq. 13: one axis, one step"),
    "volume_growth": Measure(_full_volume, "high", False, "seed 000, Eq. 13 and Algorithm 1 (QR)"),
    "volume_growth_paper": Measure(_paper_volume, "high", False,
                                   "seed 000, Algorithm 1 as written (sort, Gram-Schmidt, reset)"),
    "volume_growth_step": Measure(_step_volume, "high", False,
                                  "seed 000, Eq. 13: all axes, one step at t0 (FLIPD's trace term)"),
    "flipd": Measure(_flipd, "low", False, "seed 004, Eq. 6"),
    "normal_bundle": Measure(_normal_bundle, "low", False, "seed 004, Eqs. 7-8"),
    "copies": Measure(_copies, "high", True, "Carlini et al.: generations with l < 1/3"),
    "nearest_generation": Measure(_nearest_generation, "low", True, "distance to the nearest generation"),
    "cosine": Measure(_retrieval("cosine"), "high", True, "seed 003: top-1 cosine"),
    "split_product": Measure(_retrieval("split_product"), "high", True, "seed 003: split product, each chunk unit-normalised"),
    "lpca_generations": Measure(_lpca_generations, "low", True, "seed 004: LID_* of the generations"),
    "distance_to_mean": Measure(_distance_to_mean, "low", False, "negative control"),
}
DEFAULT_MEASURES = tuple(MEASURES)


def generate_pool(score, shape, sde, n_generate: int, n_steps: int = 50, generator=None, device="cpu",
                  dtype=torch.float32, progress: bool = False):
    """The shared pool of generations: ``n_generate`` probability-flow ODE samples (Heun, log grid)."""
    n_generate = check_positive_int(n_generate, "n_generate")
    return sample_ode(score, (n_generate, *shape), sde, n_steps=n_steps, generator=generator, device=device,
                      dtype=dtype, progress=progress)


def _progress_bar(total: int, progress: bool, unit: str = "image"):
    """A tqdm bar when asked for (imported then: tqdm.auto warns in kernels without widgets)."""
    if progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="audit", unit=unit)
    from types import SimpleNamespace

    return SimpleNamespace(update=lambda n: None, close=lambda: None)


def measure_table(score, train: torch.Tensor, sde, measures=DEFAULT_MEASURES, gen: torch.Tensor | None = None,
                  n_generate: int = 2000, n_sample_steps: int = 50, t0: float = 0.05, t0_bundle: float = 0.1,
                  n_probes: int | None = 1, n_axes: int = 8, n_steps: int = 100, sigma: float = 0.05,
                  t_start: float = 1e-3, t_cheap: float = 0.01, threshold: float = COPY_THRESHOLD,
                  n_neighbors: int = 100, extractor=None, chunk_size: int = 256, seed: int = 0,
                  subset=None, progress: bool = False, n_bundle: int | None = None,
                  step_axes: int | None = None):
    """Every measure in ``measures`` for every image of ``train``: ``(table, cost)``.

    Parameters
    ----------
    score : callable ``score(x, t)``; train : tensor ``(n, *data_shape)``; sde : VPSDE
    measures : names from :data:`MEASURES`
    gen : tensor ``(m, *data_shape)``, optional: the pool of generations (else ``n_generate`` drawn
        with ``n_sample_steps`` steps, once, when a measure needs it)
    t0, n_probes : FLIPD's noise level and Hutchinson probes; t0_bundle : the normal bundle's
    n_axes, n_steps, sigma, t_start : the full volume growth (QR, Heun, log grid); t_cheap : the end
        of the cheap one-step, one-axis growth
    threshold : Carlini's copy threshold; n_neighbors : local PCA's neighbourhood
    extractor : :class:`mempkg.retrieval.Extractor` for the retrieval measures (default pixels)
    chunk_size : training images per chunk; seed : seeds the axes, probes and generations
    subset : indices into ``train``, optional: measure only these images (the training set, for the
        copies and the mean, stays all of ``train``); :func:`run_audit` works through chunks this way
    n_bundle : the normal bundle's noisy copies per image (default ``4 d``, seed 004's)
    step_axes : axes of ``volume_growth_step`` (default all ``d``; fewer make it a random-axis
        estimate, for large images on a CPU)

    Returns
    -------
    table : DataFrame, one row per training image, one column per measure (float64)
    cost : DataFrame indexed by measure: ``seconds``, ``score_evaluations``, ``memorized``, ``source``
        (the pool's cost is the row ``"generations"``)
    """
    import pandas as pd

    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {sorted(MEASURES)}")
    if len(measures) == 0:
        raise ValueError("measures must name at least one measure")
    if train.ndim < 2 or len(train) == 0:
        raise ValueError(f"train must be (n, *data_shape) with n >= 1, got {tuple(train.shape)}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    n_generate = check_positive_int(n_generate, "n_generate")
    if gen is not None and tuple(gen.shape[1:]) != tuple(train.shape[1:]):
        raise ValueError(f"gen has images of shape {tuple(gen.shape[1:])}, train {tuple(train.shape[1:])}")
    counting = CountingScore(score)
    generator = torch.Generator(device=train.device).manual_seed(seed)
    cost = {}
    if gen is None and any(MEASURES[m].needs_generations for m in measures):
        start = time.perf_counter()
        gen = generate_pool(counting, tuple(train.shape[1:]), sde, n_generate, n_sample_steps, generator,
                            train.device, train.dtype, progress)
        cost["generations"] = {"seconds": time.perf_counter() - start, "score_evaluations": counting.evaluations,
                               "memorized": "", "source": f"{len(gen)} ODE samples"}
    ctx = {"score": counting, "sde": sde, "train": train, "gen": gen, "generator": generator, "t0": t0,
           "t0_bundle": t0_bundle, "n_probes": n_probes, "n_axes": n_axes, "n_steps": n_steps, "sigma": sigma,
           "t_start": t_start, "t_cheap": t_cheap, "threshold": threshold, "n_neighbors": n_neighbors,
           "extractor": extractor or _default_extractor(train),
           "n_bundle": None if n_bundle is None else check_positive_int(n_bundle, "n_bundle"),
           "step_axes": None if step_axes is None else check_positive_int(step_axes, "step_axes")}
    columns = {}
    subset = torch.arange(len(train)) if subset is None else torch.as_tensor(subset, dtype=torch.long).flatten()
    bar = _progress_bar(len(measures) * len(subset), progress)
    for name in measures:
        counting.evaluations = 0
        start = time.perf_counter()
        parts = []
        for lo in range(0, len(subset), chunk_size):
            ctx["index"] = subset[lo:lo + chunk_size]
            x = train[ctx["index"].to(train.device)]
            parts.append(MEASURES[name].fn(ctx, x).detach().double().cpu())
            bar.update(len(x))
        columns[name] = torch.cat(parts).numpy()
        cost[name] = {"seconds": time.perf_counter() - start, "score_evaluations": counting.evaluations,
                      "memorized": MEASURES[name].memorized, "source": MEASURES[name].source}
    bar.close()
    table = pd.DataFrame(columns, index=subset.numpy())
    table.index.name = "image"
    return table, pd.DataFrame.from_dict(cost, orient="index")


def memorization_ranks(table):
    """Rank each measure so that 1 is the image it calls most memorized (ties share the mean rank)."""
    ranks = table.copy()
    for name in table.columns:
        ranks[name] = table[name].rank(ascending=MEASURES[name].memorized == "low")
    return ranks


# --- `python -m mempkg audit`: a user's model and images, resumable, with an HTML report -------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _read_folder(path) -> torch.Tensor:
    """The images of a folder as ``(n, C, H, W)`` in [-1, 1]: grey (C = 1) when every image is grey,
    else RGB (C = 3; palettes expanded, alpha dropped). Every image must have the same size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--train: {path} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    pictures = []
    for f in files:
        try:
            with Image.open(f) as picture:
                picture.load()
                pictures.append(picture)
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"--train: {f} is not a readable image ({type(exc).__name__})") from exc
    sizes = sorted({p.size for p in pictures})
    if len(sizes) > 1:
        raise ValueError(f"--train: the images of {path} have mixed sizes (width, height) {sizes}; "
                         "resize them to one size first")
    gray = all(p.mode in _GRAY_MODES for p in pictures)

    def pixels(p):
        if p.mode in ("I", "I;16", "I;16B", "I;16L", "F"):    # 16-bit or float grey: scale by its range
            a = np.asarray(p, dtype=np.float64)
            top = 65535.0 if p.mode.startswith("I") and a.max() > 255 else 255.0
            a = a / top * 255
            return np.repeat(a[..., None], 3, axis=-1) if not gray else a
        return np.asarray(p.convert("L" if gray else "RGB"), dtype=np.float64)

    x = torch.from_numpy(np.stack([pixels(p) for p in pictures])).float() / 127.5 - 1
    return x[:, None] if gray else x.permute(0, 3, 1, 2)


def load_images(spec: str) -> torch.Tensor:
    """Training images from ``spec``, ``(n, C, H, W)`` float32.

    ``spec`` is a ``.npy``/``.pt`` tensor ``(n, C, H, W)`` or ``(n, H, W)`` (floats used as they are,
    the model's range, usually [-1, 1]; ``uint8`` scaled from [0, 255] to [-1, 1]), a folder of
    PNG/JPEG/BMP images (one size; scaled to [-1, 1], see :func:`_read_folder`), or
    ``cifar10:<root>`` (a local copy, :func:`mempkg.data.cifar10`). Raises ``ValueError`` with one
    line naming ``--train`` for anything else.
    """
    import pickle
    import zipfile
    from pathlib import Path

    import numpy as np

    from . import data

    if spec.startswith("cifar10:"):
        try:
            return data.cifar10(spec.split(":", 1)[1] or None, dtype=torch.float32)
        except (FileNotFoundError, pickle.UnpicklingError, KeyError) as exc:
            raise ValueError(f"--train: {' '.join(str(exc).split())}") from exc
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--train: {spec} does not exist")
    if path.is_dir():
        return _read_folder(path)
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            x = torch.load(path, weights_only=True, map_location="cpu")
        else:
            raise ValueError(f"--train: {spec} is not a folder, a .npy or .pt file, or cifar10:<root>")
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ValueError(f"--train: {spec} could not be read ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from exc
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise ValueError(f"--train: {spec} holds an array of dtype {x.dtype}, not numbers")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"--train: {spec} holds a {type(x).__name__}, not a tensor of images")
    x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"--train: images must be (n, C, H, W) or (n, H, W) with n >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"--train: {spec} holds NaN or infinite values")
    return x.contiguous()


def check_device(device: str) -> str:
    """``device`` if torch can use it here; else ``ValueError`` naming ``--device``."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device: {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device} was asked for but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device: {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def _load_diffusers(path, device, sde):
    """A diffusers folder (a pipeline's ``unet/`` and ``scheduler/``, or one folder holding both
    configs) as a score, through :func:`mempkg.adapters.from_diffusers`."""
    import json

    try:
        import diffusers
    except ImportError as exc:
        raise ValueError("--model: a diffusers folder needs diffusers: pip install -e '.[diffusers]'") from exc
    try:
        from .adapters import from_diffusers
    except ImportError as exc:
        raise ValueError("--model: diffusers folders need mempkg.adapters.from_diffusers, "
                         "which this version of mempkg lacks") from exc
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
    if not (unet_dir / "config.json").exists() or not (sched_dir / "scheduler_config.json").exists():
        raise ValueError(f"--model: {path} is a folder but not a diffusers model (it needs a UNet's "
                         "config.json and a scheduler_config.json, e.g. in unet/ and scheduler/)")
    name = json.loads((sched_dir / "scheduler_config.json").read_text()).get("_class_name", "")
    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None or not hasattr(scheduler_class, "from_pretrained"):
        scheduler_class = diffusers.DDPMScheduler        # any DDPM-family config gives alphas_cumprod
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir).to(device).eval()
        scheduler = scheduler_class.from_pretrained(sched_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--model: {path} could not be loaded as a UNet2DModel and its scheduler "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
    return from_diffusers(unet, scheduler, sde)


def load_score(spec: str, device="cpu", sde=None):
    """The score ``score(x, t)`` of ``spec`` on the VP-SDE ``sde``.

    ``spec`` is a recipe of :mod:`mempkg.checkpoints` (:func:`~mempkg.checkpoints.load_model`), the
    checkpoint ``DIR/NAME.pt`` of a recipe trained into another folder (``python -m mempkg train NAME
    --out DIR``, e.g. a CIFAR-10 recipe; verified against ``DIR/manifest.json``), a TorchScript noise
    network ``net(x, t)`` (``t`` a ``(batch,)`` tensor of continuous times in [0, 1]; read with :class:`~mempkg.score.NetworkScore`, ``"eps"``), or a folder saved by diffusers (a
    ``UNet2DModel`` and its scheduler, :func:`mempkg.adapters.from_diffusers`). Raises ``ValueError``
    naming ``--model`` when it is none of these.
    """
    import warnings
    from pathlib import Path

    from . import checkpoints
    from .score import NetworkScore
    from .sde import VPSDE

    sde = sde or VPSDE()
    if spec in checkpoints.RECIPES:
        try:
            return checkpoints.load_model(spec, device=device)
        except (FileNotFoundError, checkpoints.ChecksumError) as exc:
            raise ValueError(f"--model: {' '.join(str(exc).split())}") from exc
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--model: {spec} is neither a recipe ({', '.join(sorted(checkpoints.RECIPES))}) "
                         "nor an existing file or folder")
    if path.is_dir():
        return _load_diffusers(path, device, sde)
    if path.stem in checkpoints.RECIPES and path.stem in checkpoints.read_manifest(path.parent / "manifest.json"):
        try:                                      # a recipe trained elsewhere (`mempkg train NAME --out DIR`)
            return checkpoints.load_model(path.stem, device=device, data_dir=path.parent)
        except checkpoints.ChecksumError as exc:
            raise ValueError(f"--model: {' '.join(str(exc).split())}") from exc
    try:
        with warnings.catch_warnings():           # torch's deprecation notice of TorchScript: noise for a user
            warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:                      # not TorchScript: say what is accepted
        raise ValueError(f"--model: {spec} is not a TorchScript file ({type(exc).__name__}); save a noise "
                         "network with torch.jit.script(net).save(path)") from exc
    return NetworkScore(_TensorTime(net), sde, "eps")


class _TensorTime(torch.nn.Module):
    """A network called as ``net(x, t)`` with ``t`` always a ``(batch,)`` tensor (TorchScript is typed)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]))


def check_model_fits(score, train: torch.Tensor):
    """One score call on one image at ``t = 0.5``: the model must map an image to a finite tensor of
    its shape; else ``ValueError``."""
    try:
        with torch.no_grad():
            out = score(train[:1], 0.5)
    except Exception as exc:
        raise ValueError(f"the model cannot take images of shape {tuple(train.shape[1:])}: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(train[:1].shape):
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model returns shape {shape} for images of shape {tuple(train.shape[1:])}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the model returns NaN or infinite values on the first training image")


def _fingerprint(x: torch.Tensor) -> str:
    """sha256 of the images (shape and float32 bytes): a resumed audit must see the same data."""
    import hashlib

    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_atomic(path, write):
    """``write(tmp)`` then rename ``tmp`` to ``path``: a file is either complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)
    return path


def _check_out(out, settings: dict):
    """Refuse an ``out`` that is a file, or a non-empty folder holding no audit or another audit's work."""
    import json

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    previous = out / ".chunks" / "settings.json"
    if not previous.exists():
        raise ValueError(f"--out: {out} is not empty and holds no audit; choose another folder")
    try:
        before = json.loads(previous.read_text())
    except ValueError:
        before = {}
    changed = [f"{k}: {before.get(k)!r} there, {v!r} now" for k, v in settings.items() if before.get(k) != v]
    if changed:
        raise ValueError(f"--out: {out} is not empty: it holds an audit with other settings ("
                         f"{'; '.join(changed)[:300]}); rerun with the same settings to resume, or choose "
                         "another folder")


def run_audit(model: str, train: str, out, measures=DEFAULT_MEASURES, device="cpu", n_generate: int = 2000,
              chunk_size: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Audit a model's training images into ``out``: measures, ranks, costs and an HTML report.

    Everything is checked before any work (measures, device, ``out``, the images, the model and one
    score call on one image): a ``ValueError`` with one line then, and ``out`` is not touched.
    Training images are measured in chunks of ``chunk_size`` (:func:`measure_table` with ``subset``,
    seeded ``seed + k`` for chunk ``k``); each finished chunk is kept in ``out/.chunks`` with the
    settings (model, data and its sha256, measures, ``n_generate``, ``chunk_size``, ``seed``) and the
    pool of generations (``generations.pt``, drawn once), so a rerun with the same settings computes
    only the missing chunks and one with other settings is refused. Every file is written under a
    temporary name and renamed, so none is ever half-written; a failure before any work was kept
    removes an ``out`` it created. The final files are ``measures.csv`` and ``measures.parquet``
    (each measure and its rank from :func:`memorization_ranks`), ``cost.csv`` (seconds and score
    evaluations per measure, summed over chunks, and the pool as the row ``generations``) and
    ``report.html`` (:func:`write_report`). Returns the paths written.
    """
    import json
    import shutil
    from pathlib import Path

    import pandas as pd

    from .sde import VPSDE

    measures = tuple(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"--measures: unknown {unknown or 'none given'}; choose from {', '.join(MEASURES)}")
    chunk_size = check_positive_int(chunk_size, "--chunk-size")
    n_generate = check_positive_int(n_generate, "--n-generate")
    check_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    images = load_images(train)
    settings = {"model": model, "train": train, "train_shape": list(images.shape),
                "train_sha256": _fingerprint(images), "measures": list(measures), "n_generate": n_generate,
                "chunk_size": chunk_size, "seed": seed}
    _check_out(out, settings)
    images = images.to(device)
    sde = VPSDE()
    score = load_score(model, device, sde)
    check_model_fits(score, images)

    chunks = out / ".chunks"
    created = not out.exists()
    chunks.mkdir(parents=True, exist_ok=True)
    try:
        _write_atomic(chunks / "settings.json", lambda p: p.write_text(json.dumps(settings, indent=2)))
        gen, pool_cost = None, None
        if any(MEASURES[m].needs_generations for m in measures):
            gen, pool_cost = _generation_pool(score, images, sde, n_generate, seed, chunks, device, progress)
        starts = range(0, len(images), chunk_size)
        bar = _progress_bar(len(starts), progress, unit="chunk")
        tables, costs = [], []
        for k, lo in enumerate(starts):
            part, part_cost = chunks / f"chunk_{k:05d}.parquet", chunks / f"cost_{k:05d}.csv"
            if not (part.exists() and part_cost.exists()):
                table, cost = measure_table(score, images, sde, measures, gen=gen, seed=seed + k,
                                            subset=torch.arange(lo, min(lo + chunk_size, len(images))))
                _write_atomic(part_cost, cost.to_csv)       # the cost first: the table marks a chunk done
                _write_atomic(part, table.to_parquet)
            tables.append(pd.read_parquet(part))
            costs.append(pd.read_csv(part_cost, index_col=0, keep_default_na=False))
            bar.update(1)
        bar.close()
    except BaseException:
        kept = list(chunks.glob("chunk_*.parquet")) + list(chunks.glob("generations.pt"))
        if created and not kept:
            shutil.rmtree(out, ignore_errors=True)     # nothing worth keeping in a folder we made
        raise
    table = pd.concat(tables)
    table.index.name = "image"
    cost = _total_cost(costs, pool_cost)
    full = table.join(memorization_ranks(table).add_suffix("_rank"))
    written = {"measures.csv": _write_atomic(out / "measures.csv", full.to_csv),
               "measures.parquet": _write_atomic(out / "measures.parquet", full.to_parquet),
               "cost.csv": _write_atomic(out / "cost.csv", cost.to_csv)}
    info = {"model": model, "training images": f"{train}: {len(images)} images of shape {tuple(images.shape[1:])}",
            "generations": f"{n_generate} (probability-flow ODE, seed {seed})" if gen is not None else "none needed",
            "chunks": f"{len(starts)} of up to {chunk_size} images", "device": str(device)}
    written["report.html"] = write_report(table, cost, images.cpu(), out / "report.html",
                                          title=f"Memorization audit of {model}", info=info)
    return written


def _generation_pool(score, images, sde, n_generate, seed, chunks, device, progress):
    """The pool of generations and its cost: read from ``chunks`` or drawn once and saved there."""
    import json

    pool, pool_cost = chunks / "generations.pt", chunks / "generations_cost.json"
    if pool.exists() and pool_cost.exists():
        return torch.load(pool, weights_only=True).to(device), json.loads(pool_cost.read_text())
    counting = CountingScore(score)
    start = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(seed)
    gen = generate_pool(counting, tuple(images.shape[1:]), sde, n_generate, generator=g, device=device,
                        dtype=images.dtype, progress=progress)
    cost = {"seconds": time.perf_counter() - start, "score_evaluations": counting.evaluations,
            "memorized": "", "source": f"{n_generate} ODE samples, shared by the generation measures"}
    _write_atomic(pool_cost, lambda p: p.write_text(json.dumps(cost)))
    _write_atomic(pool, lambda p: torch.save(gen.cpu(), p))
    return gen, cost


def _total_cost(costs, pool_cost=None):
    """The chunks' costs summed per measure (seconds, score evaluations), the pool's row first."""
    import pandas as pd

    total = costs[0][["memorized", "source"]].copy()
    for column in ("seconds", "score_evaluations"):
        total[column] = sum(c[column] for c in costs)
    total = total[["seconds", "score_evaluations", "memorized", "source"]]
    if pool_cost is not None:
        total = pd.concat([pd.DataFrame([pool_cost], index=["generations"]), total])
    total.index.name = "measure"
    return total


def _png_base64(image: torch.Tensor, size: int = 64) -> str:
    """An image in [-1, 1], ``(C, H, W)``, as a base64 PNG, upscaled (nearest neighbour) to about
    ``size`` pixels on its longer side when smaller."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    x = x[0] if x.shape[0] != 3 else x.permute(1, 2, 0)
    scale = max(1, size // max(x.shape[0], x.shape[1]))
    picture = Image.fromarray(np.asarray(x)).resize((x.shape[1] * scale, x.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _heatmap_base64(rho) -> str:
    """The rank-correlation matrix as a base64 PNG heat map (matplotlib's Agg canvas, no pyplot:
    the caller's backend and figures are left alone)."""
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rho)
    fig = Figure(figsize=(2.5 + 0.45 * n, 1.8 + 0.45 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(rho.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), rho.columns, rotation=90)
    ax.set_yticks(range(n), rho.columns)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{rho.iat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(rho.iat[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Spearman rho")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def consensus_rank(table):
    """Each image's mean rank over the measures of ``table`` (:func:`memorization_ranks`; 1 = most
    memorized), sorted from most to least memorized."""
    return memorization_ranks(table).mean(axis=1).sort_values(kind="stable")


def agreement(table):
    """Spearman rank correlations between the measures, each oriented so that larger means more
    memorized (positive: two measures call the same images memorized)."""
    oriented = table.apply(lambda col: col if MEASURES[col.name].memorized == "high" else -col)
    return oriented.corr(method="spearman")


def _gallery(indices, consensus, images) -> str:
    cells = [f'<figure><img src="data:image/png;base64,{_png_base64(images[int(i)])}" alt="training image {int(i)}">'
             f"<figcaption>#{int(i)}<br>mean rank {consensus[i]:.1f}</figcaption></figure>" for i in indices]
    return '<div class="gallery">' + "".join(cells) + "</div>"


_STYLE = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
          ".gallery{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;text-align:center;font-size:small}"
          "img{image-rendering:pixelated}")


def report_html(table, cost, images: torch.Tensor, title: str, info: dict | None = None, n_show: int = 16) -> str:
    """A self-contained HTML page (images as base64 PNG; no external files, styles or scripts).

    Summary (``info``, the number of images, each measure's orientation, source and cost), the
    ``n_show`` most and least reproducible training images by consensus rank (:func:`consensus_rank`:
    the mean of the measures' ranks), and the measures' agreement (:func:`agreement`, a heat map and
    a table; absent with one measure).

    Parameters
    ----------
    table : DataFrame, one row per training image (index into ``images``), one column per measure
    cost : DataFrame indexed by measure (``seconds``, ``score_evaluations``, ``memorized``, ``source``)
    images : tensor ``(n, C, H, W)`` in [-1, 1]; title : str; info : dict of str, the summary's rows
    """
    import html

    consensus = consensus_rank(table)
    n_show = min(n_show, len(consensus))
    info = {**(info or {}), "images measured": str(len(table)), "measures": ", ".join(table.columns)}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items())
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><h2>Summary</h2><table>{rows}</table>",
        "<h2>Measures</h2>",
        cost.to_html(float_format=lambda v: f"{v:.3g}", index_names=False),
        "<p><i>memorized</i>: which end of a measure marks a memorized image (high or low), fixed by the "
        "paper that proposes it; <i>seconds</i> and <i>score_evaluations</i> are totals over all images "
        "(a JVP tangent counts as one evaluation)"
        + ("; the row <i>generations</i> is the pool of generations, drawn once and shared by the "
           "measures that read generations (their own rows exclude it)" if "generations" in cost.index else "") + ".</p>",
        f"<h2>The {n_show} training images most likely reproduced</h2>",
        "<p>Ordered by consensus rank: each measure ranks the images (1 = the image it calls most "
        f"memorized) and the consensus is the mean of the {table.shape[1]} ranks. "
        "Captions give the image's index in the training set and its mean rank.</p>",
        _gallery(consensus.index[:n_show], consensus, images),
        f"<h2>The {n_show} training images least likely reproduced</h2>",
        _gallery(consensus.index[::-1][:n_show], consensus, images),
        "<h2>Do the measures agree?</h2>",
    ]
    if table.shape[1] > 1:
        rho = agreement(table)
        parts += ["<p>Spearman rank correlations between the measures, each oriented so that larger means "
                  "more memorized: positive when two measures call the same images memorized.</p>",
                  f'<img src="data:image/png;base64,{_heatmap_base64(rho)}" alt="rank correlations between measures">',
                  rho.to_html(float_format=lambda v: f"{v:.2f}")]
    else:
        parts.append("<p>One measure only: nothing to compare.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(table, cost, images: torch.Tensor, path, title: str, info: dict | None = None):
    """Write :func:`report_html` to ``path`` (through a temporary name); return ``path``."""
    from pathlib import Path

    page = report_html(table, cost, images, title, info)
    return _write_atomic(Path(path), lambda p: p.write_text(page, encoding="utf-8"))
