"""Parameter sweeps: a grid of chapter runs as tasks on Dask distributed, resumable, one tidy table.

``python -m mempkg sweep 2 -g seed 0,1,2 -g n_train 16,64 -p n_generate 200`` runs the six
combinations of chapter 2 with papermill, each in its own run folder
``runs/<chapter>/<name=value,...>/`` (the same folders as ``python -m mempkg run``), on a
``LocalCluster`` sized to the machine or on an existing scheduler (``--scheduler ADDRESS``).

* The grid is checked against the chapter's parameters cell before anything starts
  (:class:`mempkg.run.ParameterError` names the parameter).
* A run already complete with the same parameters and the same code version (a hash of the
  chapter source and of mempkg's sources, see :func:`mempkg.run.code_version`) is skipped, so an
  interrupted sweep resumes where it stopped.
* A failed run keeps its partial notebook and its error (``FAILED``), is reported at the end and
  does not stop the others.
* :func:`collect` writes ``runs/<chapter>/sweep.parquet`` and ``sweep.csv``: the parameters, every
  row of each run's closing table (``summary.csv``), the duration, git commit, package versions
  and device. :func:`plot_sweep` draws a closing-table number against a swept parameter.
"""
from __future__ import annotations

import ast
import itertools
import json
import os
from pathlib import Path

from . import run as _run

__all__ = ["parse_grid", "expand_grid", "plan_sweep", "run_sweep", "collect", "plot_sweep"]


def parse_values(text: str) -> list:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``"digits,cifar10"`` -> strings; ``"[1,2],[3]"`` -> two lists."""
    text = text.strip()
    if not text:
        return []
    try:
        values = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        values = [_run.parse_value(v.strip()) for v in text.split(",") if v.strip()]
    return list(values)


def parse_grid(pairs) -> dict:
    """Command-line ``-g NAME V1,V2`` pairs -> ``{name: [values]}``; an empty list raises, naming it."""
    grid = {}
    for name, text in pairs:
        values = parse_values(text) if isinstance(text, str) else list(text)
        if not values:
            raise _run.ParameterError(f"grid parameter {name!r} has an empty list of values")
        if name in grid:
            raise _run.ParameterError(f"grid parameter {name!r} is given twice")
        grid[name] = values
    return grid


def expand_grid(grid: dict, fixed: dict | None = None) -> list[dict]:
    """Every combination of the grid's values, each merged with the ``fixed`` parameters."""
    names = list(grid)
    return [dict(fixed or {}, **dict(zip(names, combo))) for combo in itertools.product(*(grid[n] for n in names))]


def plan_sweep(chapter, grid: dict, fixed: dict | None = None, root="runs", notebooks=_run.NOTEBOOKS) -> dict:
    """Check the grid and return the plan: source, code version, runs (parameters, folder, done).

    Raises :class:`mempkg.run.ParameterError` (naming the parameter) for an unknown parameter, an
    empty value list, a value of the wrong type, or a parameter both swept and fixed.
    """
    source = _run.find_chapter(str(chapter), Path(notebooks))
    fixed = dict(fixed or {})
    grid = {k: list(v) for k, v in grid.items()}
    if not grid:
        raise _run.ParameterError("the grid is empty: give at least one -g NAME V1,V2,...")
    for name, values in grid.items():
        if not values:
            raise _run.ParameterError(f"grid parameter {name!r} has an empty list of values")
        if name in fixed:
            raise _run.ParameterError(f"parameter {name!r} is both swept (-g) and fixed (-p)")
        for value in values:
            _run.validate_parameters(source, {name: value})
    _run.validate_parameters(source, fixed)
    version = _run.code_version(source)
    runs = []
    for params in expand_grid(grid, fixed):
        folder = _run.run_folder(source, params, Path(root))
        runs.append({"parameters": params, "folder": folder, "done": _run.is_complete(folder, params, version)})
    folders = [r["folder"] for r in runs]
    if len(set(folders)) != len(folders):
        raise _run.ParameterError("two runs of the grid map to the same folder (values too long or differing only in punctuation)")
    return {"source": source, "version": version, "grid": grid, "fixed": fixed, "runs": runs, "root": Path(root)}


def _task(source: str, parameters: dict, folder: str, version: str) -> dict:
    """One run on a worker (module-level so Dask can pickle it by reference)."""
    return _run.execute_run(Path(source), parameters, Path(folder), version=version, progress=False)


def default_workers() -> int:
    """One single-threaded worker per core (a chapter uses one core well enough; torch threads = 1)."""
    return max(1, os.cpu_count() or 1)


def run_sweep(chapter, grid: dict, fixed: dict | None = None, root="runs", scheduler: str | None = None,
              workers: int | None = None, notebooks=_run.NOTEBOOKS, progress: bool = True) -> dict:
    """Run the grid's missing runs on Dask, then write the sweep table; return a summary.

    The summary has ``ran``, ``skipped`` and ``failed`` (lists of run folders; ``failed`` as
    ``(folder, error)``), ``table`` (the DataFrame) and ``path`` (the parquet file).
    """
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    plan = plan_sweep(chapter, grid, fixed, root=root, notebooks=notebooks)
    todo = [r for r in plan["runs"] if not r["done"]]
    skipped = [r["folder"] for r in plan["runs"] if r["done"]]
    ran, failed = [], []
    if todo:
        cluster = None
        if scheduler:
            client = Client(scheduler)
        else:
            n = workers or min(default_workers(), len(todo))
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            client = Client(cluster)
        try:
            futures = {}
            for r in todo:
                fut = client.submit(_task, str(plan["source"].resolve()), r["parameters"], str(Path(r["folder"]).resolve()),
                                    plan["version"], pure=False, key=f"run-{plan['source'].stem}-{r['folder'].name}")
                futures[fut] = r
            bar = tqdm(total=len(plan["runs"]), initial=len(skipped), desc=f"sweep {plan['source'].stem}", unit="run",
                       disable=not progress)
            for fut in as_completed(futures):
                r = futures[fut]
                try:
                    record = fut.result()
                except Exception as exc:  # the worker died (killed, out of memory): mark the folder
                    record = {"status": "failed", "error": _run.one_line(exc)}
                    folder = Path(r["folder"])
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "FAILED").write_text(record["error"] + "\n")
                if record["status"] == "complete":
                    ran.append(r["folder"])
                else:
                    failed.append((r["folder"], record["error"]))
                bar.update(1)
            bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    table = collect(plan["source"], plan["runs"], Path(root))
    return {"ran": ran, "skipped": skipped, "failed": failed, "table": table,
            "path": Path(root) / plan["source"].stem / "sweep.parquet"}


def collect(source: Path, runs: list[dict], root: Path):
    """Write ``root/<chapter>/sweep.parquet`` and ``.csv`` from the runs' folders; return the table.

    One row per row of each run's closing table (``summary.csv``; one row when it wrote none, or
    when the run failed), with columns: the chapter's parameters (defaults filled in), the closing
    table's columns, then ``run``, ``status``, ``error``, ``duration_s``, ``git_commit``,
    ``code_version``, ``device`` and ``versions`` (JSON).
    """
    import pandas as pd

    defaults = {k: v for k, v in _run.chapter_parameters(source).items() if k not in _run.RUNNER_PARAMETERS}
    frames = []
    for r in runs:
        folder = Path(r["folder"])
        info = {}
        if (folder / "run.json").exists():
            info = json.loads((folder / "run.json").read_text())
        params = {k: (None if v is _run._NO_DEFAULT else v) for k, v in defaults.items()}
        params.update(r["parameters"])
        params = {k: (v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)) for k, v in params.items()}
        summary = folder / "summary.csv"
        status = info.get("status", "missing")
        if status == "complete" and summary.exists():
            rows = pd.read_csv(summary)
        else:
            rows = pd.DataFrame(index=[0])
        meta = {
            "run": folder.name,
            "status": status,
            "error": info.get("error"),
            "duration_s": info.get("duration_s"),
            "git_commit": info.get("git_commit"),
            "code_version": info.get("code_version"),
            "device": info.get("device", str(params.get("device", "cpu"))),
            "versions": json.dumps(info.get("versions", {}), sort_keys=True),
        }
        for i, (name, value) in enumerate(params.items()):
            column = name if name not in rows.columns else f"param_{name}"  # a closing-table column of that name
            rows.insert(i, column, [value] * len(rows))
        for name, value in meta.items():
            rows[name] = value
        frames.append(rows)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in table.columns:  # parquet needs one type per column: mixed object columns become text
        if table[column].dtype == object:
            kinds = {type(v) for v in table[column].dropna()}
            if len(kinds) > 1:
                table[column] = table[column].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    out = Path(root) / source.stem
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "sweep.parquet", index=False)
    table.to_csv(out / "sweep.csv", index=False)
    return table


def plot_sweep(table, x: str, y: str | None = None, claim: str | None = None, ax=None, level: float = 0.95):
    """Draw a closing-table number against the swept parameter ``x``, mean and confidence band.

    ``y`` is a column of the table, by default the closing table's ``this run``. The chapters'
    closing tables (:func:`mempkg.report.claims_table`) hold text there, such as "64 / 64 samples
    are copies (nearest distance 2e-18)": a cell that is not a number is read as **the first
    number in its text** (64 here), so pick the claim (``claim``: rows whose ``claim`` starts with
    it) whose first number is the quantity you sweep, or pass a numeric column as ``y``. Runs that share ``x`` (other seeds,
    other swept values) are pooled: the line is their mean and the band a Student-t interval of the
    mean at ``level`` (no band where there is one run). Only complete runs are used.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from scipy import stats

    data = table[table["status"] == "complete"] if "status" in table else table
    if claim is not None:
        data = data[data["claim"].astype(str).str.startswith(claim)]
    column = y or "this run"
    values = pd.to_numeric(data[column], errors="coerce")
    first = data[column].astype(str).str.extract(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", expand=False)
    values = values.fillna(pd.to_numeric(first, errors="coerce"))
    data = data.assign(_y=values).dropna(subset=["_y"])
    if data.empty:
        raise ValueError(f"no numeric values of {column!r}" + (f" for claim {claim!r}" if claim else ""))
    grouped = data.groupby(x)["_y"]
    mean, sem, count = grouped.mean(), grouped.sem(), grouped.count()
    half = sem * stats.t.ppf(0.5 + level / 2, np.maximum(count - 1, 1))
    half = half.where(count > 1, 0.0).fillna(0.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    xs = np.asarray(mean.index)
    ax.plot(xs, mean.values, marker="o")
    ax.fill_between(xs, (mean - half).values, (mean + half).values, alpha=0.25, label=f"{int(level * 100)}% interval of the mean")
    ax.set_xlabel(x)
    ax.set_ylabel(claim or column)
    ax.legend(frameon=False)
    return ax
