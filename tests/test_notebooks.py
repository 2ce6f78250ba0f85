"""The chapters: source/executed pairs in sync, papermill conventions, smoke runs, the book build.

nbval itself (re-executing every executed chapter and comparing outputs) runs on book/chapters/
through pytest's `--nbval` option (see pyproject.toml), not from this file.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from mempkg import run

ROOT = Path(__file__).resolve().parent.parent
SOURCES = run.chapters()

# Tiny parameters for the smoke run of each chapter: every chapter must have an entry.
SMOKE = {
    "01_vpsde": dict(n_paths=2000, n_sde_steps=100, n_ode_samples=500, n_ode_steps=50, n_seeds=2),
    "02_exact_scores": dict(n_train=16, n_generate=64, n_steps=30, n_mc=2000),
    "03_volume_growth": dict(n_points=32, n_steps=50, n_axis_draws=2, n_boot=100),
    "04_overfitted_model": dict(n_generate=100, n_sample_steps=20, n_axes=8, n_steps=20, sweep_points=4, sweep_steps=5),
    "05_memorized_vs_unmemorized": dict(n_generate=300, n_sample_steps=10, n_compare=10, axes_sweep=[1, 4], n_steps=10),
    "08_replication_by_retrieval": dict(n_generate=100, n_sample_steps=10, n_bench=40, n_generate_dup=200, n_gallery=4),
    "06_pointwise_memorization": dict(n_mc=2000, n_copier=20, n_copier_samples=500, n_replicates=20,
                                      cluster_grid=[5]),
    "07_side": dict(n_steps=5, n_random=200, n_per_lambda=20, lambda_grid=[0, 2, 8], band_factors=[1.0],
                    n_oracle=100, cluster_grid=[2, 5], n_per_k=20, n_toy=100),
    "09_local_intrinsic_dimension": dict(dims=[1, 3], n_points=8, n_lpca=120, n_neighbors=40, t0_grid=[1e-3, 0.05], n_train=16),
    "10_von_mises_mixture": dict(n_generate=200, n_sample_steps=50, t0_grid=[0.01, 0.05], n_draws=2, n_boot=100),
    "11_lid_on_images": dict(n_generate=200, n_sample_steps=20, t0_grid=[0.05], n_nb=20, n_neighbors=40),
    "12_conditioning_and_cfg": dict(n_per_class=20, n_sample_steps=20, n_lid=5, n_trajectories=2, metric_steps=20),
    "13_every_detector": dict(n_exact=60, n_point_masses=6, n_generate=200, n_independent=200, n_side=100,
                              side_clusters=5, n_draws=8, n_boot=50),
}


def code_and_markdown(nb):
    """(cell type, source) of every cell but papermill's injected parameters."""
    return [(c.cell_type, c.source.rstrip()) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def test_there_are_chapters_and_each_has_smoke_parameters():
    assert SOURCES, "no chapters found in notebooks/"
    assert sorted(p.stem for p in SOURCES) == sorted(SMOKE)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_notebook_is_in_sync_with_its_source(source):
    executed = run.EXECUTED / f"{source.stem}.ipynb"
    assert executed.exists(), f"{executed} is missing: run `make execute`"
    src, out = jupytext.read(source), nbformat.read(executed, as_version=4)
    assert code_and_markdown(src) == code_and_markdown(out), f"{executed.name} is stale: re-execute it (`python -m mempkg execute {source.stem}`)"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_notebook_follows_the_conventions(source):
    nb = nbformat.read(run.EXECUTED / f"{source.stem}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^([a-z_][a-z0-9_]*)\s*=", tagged[0].source, flags=re.M))
    assert {"seed", "device", "output_dir"} <= names
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), "executed at defaults"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell executed"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert nb.metadata.papermill.duration <= 180, "a chapter runs in at most 3 minutes at its defaults"
    assert any("claims_table(" in c.source for c in code), "the chapter ends with the paper's claims beside ours"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_smoke_run_with_tiny_parameters(source, tmp_path):
    output = run.run_chapter(source.stem, SMOKE[source.stem], root=tmp_path, progress=False)
    nb = nbformat.read(output, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    summary = pd.read_csv(output.parent / "summary.csv")
    assert list(summary.columns) == ["claim", "source", "paper", "this run", "verdict", "why"]
    assert json.loads((output.parent / "parameters.json").read_text())


def test_cli_lists_the_chapters():
    out = subprocess.run([sys.executable, "-m", "mempkg", "list"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == [p.stem for p in SOURCES]


def test_find_chapter_and_parse_value():
    assert run.find_chapter("1").stem == SOURCES[0].stem
    assert run.find_chapter(SOURCES[-1].stem) == SOURCES[-1]
    with pytest.raises(ValueError, match="chapter must be"):
        run.find_chapter("99")
    assert run.parse_value("3") == 3 and run.parse_value("1e-3") == 1e-3
    assert run.parse_value("None") is None and run.parse_value("digits") == "digits"
    assert run.run_folder(SOURCES[0], {"seed": 1, "n": 5}, Path("r")) == Path("r") / SOURCES[0].stem / "n=5,seed=1"


@pytest.mark.slow
def test_book_builds_offline_without_warnings(tmp_path):
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(tmp_path),
           "--builder", "html", "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    pages = [html / "book" / "intro.html"] + [html / "book" / "chapters" / f"{p.stem}.html" for p in SOURCES]
    for page in pages:
        assert page.exists(), f"{page} was not built"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is served from the build"
    for page in html.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<script[^>]+src="(https?://[^"]+)"', text)
        assert not remote, f"{page.name} loads scripts from the network: {remote}"
        assert "cdn.jsdelivr" not in text and "cdnjs" not in text, f"{page.name} references a CDN"
    chapter = (html / "book" / "chapters" / f"{SOURCES[0].stem}.html").read_text()
    assert "<img" in chapter, "figures are rendered"


@pytest.mark.slow
def test_volume_growth_benchmark_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "volume_growth.py"), "--batch", "2", "--axes", "4",
                          "--steps", "2", "--loop-points", "2", "--repeats", "1"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert "ratio (1.0 = only the score)" in out.stdout and "jvp" in out.stdout
    assert "speed-up (loop / batched)" in out.stdout and "ranking all 1797 digits" in out.stdout


@pytest.mark.slow
def test_lid_benchmark_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lid.py"), "--points", "4", "--repeats", "1"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert "x forward+backward" in out.stdout and "normal bundle" in out.stdout


@pytest.mark.slow
def test_side_benchmark_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "side.py"), "--batch", "4", "--steps", "2",
                          "--repeats", "1"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "x unguided" in out.stdout and "guided / limit" in out.stdout
