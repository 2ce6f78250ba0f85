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

__all__ = ["Measure", "MEASURES", "DEFAULT_MEASURES", "CountingScore", "generate_pool", "measure_table"]


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


def _full_volume(ctx, x):
    return _volume(ctx, x, n_axes=ctx["n_axes"], n_steps=ctx["n_steps"], method="qr", sigma=ctx["sigma"],
                   ode_method="heun", t_start=ctx["t_start"])


def _step_volume(ctx, x):
    """All axes, one short step from ``alpha(t0) x`` at ``t0``: to first order FLIPD's trace term (chapter 13)."""
    d = x[0].numel()
    t0 = ctx["t0"]
    return _volume(ctx, ctx["sde"].alpha(t0) * x, n_axes=d, n_steps=1, method="jvp", grid="uniform",
                   t_start=t0, t_end=t0 + 1e-4)


def _flipd(ctx, x):
    return lid.flipd(ctx["score"], x, ctx["sde"], t0=ctx["t0"], n_probes=ctx["n_probes"], generator=ctx["generator"])


def _normal_bundle(ctx, x):
    return lid.normal_bundle(ctx["score"], x, ctx["sde"], t0=ctx["t0_bundle"], generator=ctx["generator"]).double()


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
                  subset=None, progress: bool = False):
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
           "extractor": extractor or _default_extractor(train)}
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


def load_images(spec: str) -> torch.Tensor:
    """Training images from ``spec``: a ``.npy``/``.pt`` tensor ``(n, C, H, W)`` or ``(n, H, W)``, a
    folder of PNG/JPEG images (one size; scaled to [-1, 1]), or ``cifar10:<root>`` (a local copy)."""
    from pathlib import Path

    import numpy as np

    from . import data

    if spec.startswith("cifar10:"):
        return data.cifar10(spec.split(":", 1)[1], dtype=torch.float32)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--train: {spec} does not exist")
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"--train: {spec} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        arrays = [np.asarray(Image.open(f)) for f in files]
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"--train: the images of {spec} have mixed sizes {sorted(sizes)}")
        x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    elif path.suffix == ".npy":
        x = torch.from_numpy(np.load(path)).float()
    elif path.suffix == ".pt":
        x = torch.load(path, weights_only=True).float()
    else:
        raise ValueError(f"--train: {spec} is not a folder, a .npy or .pt file, or cifar10:<root>")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"--train: images must be (n, C, H, W) or (n, H, W), got {tuple(x.shape)}")
    return x.contiguous()


def load_score(spec: str, device="cpu", sde=None):
    """The score of ``spec``: a recipe of :mod:`mempkg.checkpoints`, a TorchScript noise network
    ``net(x, t)`` (``t`` a ``(batch,)`` tensor of continuous times in [0, 1]) or a folder saved by diffusers (``unet/`` and
    ``scheduler/``, or a UNet2DModel folder with a ``scheduler_config.json``)."""
    from pathlib import Path

    from . import checkpoints
    from .score import NetworkScore
    from .sde import VPSDE

    sde = sde or VPSDE()
    if spec in checkpoints.RECIPES:
        return checkpoints.load_model(spec, device=device)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--model: {spec} is neither a recipe ({', '.join(sorted(checkpoints.RECIPES))}) "
                         "nor an existing file or folder")
    if path.is_dir():
        try:
            import diffusers
        except ImportError as exc:
            raise ValueError("--model: a diffusers folder needs `pip install mempkg[diffusers]`") from exc
        from .adapters import from_diffusers

        unet_dir = path / "unet" if (path / "unet").is_dir() else path
        sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
        if not (unet_dir / "config.json").exists() or not (sched_dir / "scheduler_config.json").exists():
            raise ValueError(f"--model: {spec} is not a diffusers folder (unet config.json and "
                             "scheduler_config.json)")
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir).to(device).eval()
        scheduler = diffusers.DDPMScheduler.from_pretrained(sched_dir)
        return from_diffusers(unet, scheduler, sde)
    try:
        net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:                      # not TorchScript: say what is accepted
        raise ValueError(f"--model: {spec} is not a TorchScript file ({type(exc).__name__})") from exc
    return NetworkScore(_TensorTime(net), sde, "eps")


class _TensorTime(torch.nn.Module):
    """A network called as ``net(x, t)`` with ``t`` always a ``(batch,)`` tensor (TorchScript is typed)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]))


def check_model_fits(score, train: torch.Tensor):
    """One score call on one image: the model must map an image to a tensor of its shape."""
    try:
        with torch.no_grad():
            out = score(train[:1], 0.5)
    except Exception as exc:
        raise ValueError(f"the model cannot take images of shape {tuple(train.shape[1:])}: "
                         f"{type(exc).__name__}: {exc}") from exc
    if tuple(out.shape) != tuple(train[:1].shape):
        raise ValueError(f"the model returns shape {tuple(out.shape[1:])} for images of shape "
                         f"{tuple(train.shape[1:])}")


def run_audit(model: str, train: str, out, measures=DEFAULT_MEASURES, device="cpu", n_generate: int = 2000,
              chunk_size: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Audit a model's training images into ``out``: measures, ranks, costs and an HTML report.

    Everything is checked before any work (paths, measures, the model's output shape, an ``out``
    that holds another audit). Finished chunks of images are kept in ``out/.chunks`` with the
    settings and the pool of generations, so a rerun with the same settings resumes; the final
    files (``measures.csv``, ``measures.parquet``, ``cost.csv``, ``report.html``) are written last,
    each through a temporary name. Returns the paths written.
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
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    n_generate = check_positive_int(n_generate, "n_generate")
    out = Path(out)
    settings = {"model": model, "train": train, "measures": list(measures), "n_generate": n_generate,
                "chunk_size": chunk_size, "seed": seed}
    chunks = out / ".chunks"
    if out.exists() and any(out.iterdir()):
        previous = chunks / "settings.json"
        if not previous.exists() or json.loads(previous.read_text()) != settings:
            raise ValueError(f"--out: {out} is not empty and holds no audit with these settings; "
                             "choose another folder")
    images = load_images(train).to(device)
    sde = VPSDE()
    score = load_score(model, device, sde)
    check_model_fits(score, images)

    created = not out.exists()
    chunks.mkdir(parents=True, exist_ok=True)
    try:
        (chunks / "settings.json").write_text(json.dumps(settings, indent=2))
        gen = None
        if any(MEASURES[m].needs_generations for m in measures):
            pool = chunks / "generations.pt"
            if pool.exists():
                gen = torch.load(pool, weights_only=True).to(device)
            else:
                g = torch.Generator(device=device).manual_seed(seed)
                gen = generate_pool(score, tuple(images.shape[1:]), sde, n_generate, generator=g, device=device,
                                    dtype=images.dtype, progress=progress)
                torch.save(gen.cpu(), pool)
        starts = range(0, len(images), chunk_size)
        bar = _progress_bar(len(starts), progress, unit="chunk")
        tables, costs = [], []
        for k, lo in enumerate(starts):
            part, part_cost = chunks / f"chunk_{k:05d}.parquet", chunks / f"cost_{k:05d}.csv"
            if not (part.exists() and part_cost.exists()):
                table, cost = measure_table(score, images, sde, measures, gen=gen, seed=seed + k,
                                            subset=torch.arange(lo, min(lo + chunk_size, len(images))))
                table.to_parquet(part)
                cost.to_csv(part_cost)
            tables.append(pd.read_parquet(part))
            costs.append(pd.read_csv(part_cost, index_col=0))
            bar.update(1)
        bar.close()
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)     # nothing half-written in a folder we made
        raise
    table = pd.concat(tables)
    table.index.name = "image"
    cost = costs[0][["memorized", "source"]].copy()
    for column in ("seconds", "score_evaluations"):
        cost[column] = sum(c[column] for c in costs)
    ranks = memorization_ranks(table).add_suffix("_rank")
    full = table.join(ranks)
    written = {}
    for name, write in (("measures.csv", full.to_csv), ("measures.parquet", full.to_parquet),
                        ("cost.csv", cost.to_csv)):
        tmp = out / f".{name}.tmp"
        write(tmp)
        tmp.replace(out / name)
        written[name] = out / name
    html = report_html(table, cost, images.cpu(), title=f"Memorization audit of {model}",
                       info={"model": model, "training images": f"{train} ({len(images)} images, "
                             f"{tuple(images.shape[1:])})", "generations": str(n_generate if gen is not None else 0),
                             "seed": str(seed)})
    tmp = out / ".report.html.tmp"
    tmp.write_text(html)
    tmp.replace(out / "report.html")
    written["report.html"] = out / "report.html"
    return written


def _png_base64(image: torch.Tensor, scale: int = 4) -> str:
    """An image in [-1, 1], ``(C, H, W)``, as a base64 PNG (nearest-neighbour upscaled)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    x = ((image.clamp(-1, 1) + 1) * 127.5).round().byte()
    x = x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0)
    picture = Image.fromarray(np.asarray(x)).resize((x.shape[1] * scale, x.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _heatmap_base64(rho) -> str:
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(rho), 0.8 + 0.5 * len(rho)))
    im = ax.imshow(rho.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(rho)), rho.columns, rotation=90)
    ax.set_yticks(range(len(rho)), rho.columns)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def report_html(table, cost, images: torch.Tensor, title: str, info: dict, n_show: int = 16) -> str:
    """A self-contained HTML report (no external files or scripts): summary, the most and least
    reproducible images by consensus rank (the mean of every measure's rank), and the measures'
    agreement (Spearman correlations of the oriented measures)."""
    import html

    ranks = memorization_ranks(table)
    consensus = ranks.mean(axis=1).sort_values()
    n_show = min(n_show, len(consensus))
    oriented = table.apply(lambda col: col if MEASURES[col.name].memorized == "high" else -col)
    rho = oriented.corr(method="spearman") if table.shape[1] > 1 else None

    def gallery(indices):
        cells = [f'<figure><img src="data:image/png;base64,{_png_base64(images[int(i)])}" alt="image {int(i)}">'
                 f"<figcaption>#{int(i)} (rank {consensus[i]:.0f})</figcaption></figure>" for i in indices]
        return '<div class="gallery">' + "".join(cells) + "</div>"

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".gallery{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;text-align:center;font-size:small}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table>{rows}</table>",
        "<h2>Measures</h2>",
        cost.to_html(float_format=lambda v: f"{v:.3g}"),
        "<p>memorized = which end of a measure marks a memorized image; seconds and score evaluations "
        "are totals over all images.</p>",
        f"<h2>The {n_show} images most likely reproduced</h2>",
        "<p>By consensus rank: the mean over the measures of each image's rank (1 = most memorized).</p>",
        gallery(consensus.index[:n_show]),
        f"<h2>The {n_show} images least likely reproduced</h2>",
        gallery(consensus.index[::-1][:n_show]),
    ]
    if rho is not None:
        parts += ["<h2>Do the measures agree?</h2><p>Spearman correlations of the oriented measures "
                  "(positive: they call the same images memorized).</p>",
                  f'<img src="data:image/png;base64,{_heatmap_base64(rho)}" alt="rank correlations">',
                  rho.to_html(float_format=lambda v: f"{v:.2f}")]
    parts.append("</body></html>")
    return "\n".join(parts)
