"""`python -m mempkg run` checks parameters and marks failures; `sweep` runs grids on Dask and resumes.

Everything runs a tiny Jupytext chapter written into tmp_path (seconds, not minutes). Tests that
execute it are marked slow (about a minute together); the parameter checks take seconds.
"""
import json
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import pandas as pd
import pytest

from mempkg import run, sweep

ROOT = Path(__file__).resolve().parent.parent

TINY = '''---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---

# A tiny chapter

```{code-cell} ipython3
:tags: [parameters]

seed = 0
pause = 0.0
scale = 1.0
label = "a"
fail = False
extra = None
output_dir = None
```

```{code-cell} ipython3
import time

from mempkg.report import claims_table, fmt, save_results

time.sleep(pause)
if fail:
    raise RuntimeError("the tiny chapter was asked to fail")
value = scale * (seed + 1)
summary = claims_table([
    ("value", "tiny", "1", fmt(value), "agrees", "scale times seed plus one"),
    ("label", "tiny", "a", label, "not comparable", "text"),
])
save_results(summary, output_dir)
```
'''


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "01_tiny.md").write_text(TINY)
    return folder


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mempkg", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_chapter_parameters_read_from_the_parameters_cell(notebooks):
    params = run.chapter_parameters(notebooks / "01_tiny.md")
    assert params == {"seed": 0, "pause": 0.0, "scale": 1.0, "label": "a", "fail": False, "extra": None, "output_dir": None}


@pytest.mark.parametrize("bad, message", [
    ({"nonexistent_param": 3}, "no parameter 'nonexistent_param'; its parameters are: seed, pause, scale, label, fail, extra"),
    ({"seed": 1.5}, "parameter 'seed'"),
    ({"seed": True}, "parameter 'seed'"),
    ({"label": 3}, "parameter 'label'"),
    ({"fail": 1}, "parameter 'fail'"),
    ({"output_dir": "x"}, "set by the runner"),
])
def test_bad_run_parameters_raise_before_anything_runs(notebooks, tmp_path, bad, message):
    with pytest.raises(run.ParameterError, match=message.replace("(", r"\(")):
        run.run_chapter("1", bad, root=tmp_path / "runs", notebooks=notebooks)
    assert not (tmp_path / "runs").exists()


def test_good_values_pass_validation(notebooks):
    run.validate_parameters(notebooks / "01_tiny.md", {"scale": 2, "seed": 3, "extra": [1, 2], "label": "b"})


def test_cli_run_unknown_parameter_exits_nonzero_without_a_folder(notebooks, tmp_path):
    out = cli("run", "1", "-p", "nonexistent_param", "3", "--root", str(tmp_path / "runs"), "--notebooks", str(notebooks), cwd=tmp_path)
    assert out.returncode != 0
    assert "nonexistent_param" in out.stderr and "seed, pause, scale, label, fail, extra" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_run_of_the_real_chapter_rejects_a_typo(tmp_path):
    out = cli("run", "2", "-p", "nonexistent_param", "3", "--root", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 2 and "n_train" in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_run_failure_marks_the_folder_and_prints_one_line(notebooks, tmp_path):
    out = cli("run", "1", "-p", "fail", "True", "--root", str(tmp_path / "runs"), "--notebooks", str(notebooks), cwd=tmp_path)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("FAILED ") and "RuntimeError: the tiny chapter was asked to fail" in last
    folder = tmp_path / "runs" / "01_tiny" / "fail=True"
    assert "RuntimeError" in (folder / "FAILED").read_text()
    assert (folder / "01_tiny.ipynb").exists()  # the partial notebook stays
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"
    assert not run.is_complete(folder, {"fail": True}, run.code_version(notebooks / "01_tiny.md"))


@pytest.mark.slow
def test_run_writes_summary_and_provenance(notebooks, tmp_path):
    output = run.run_chapter("1", {"seed": 2}, root=tmp_path / "runs", notebooks=notebooks, progress=False)
    folder = output.parent
    assert float(pd.read_csv(folder / "summary.csv")["this run"][0]) == 3
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "complete" and info["parameters"] == {"seed": 2} and info["duration_s"] > 0
    assert run.is_complete(folder, {"seed": 2}, run.code_version(notebooks / "01_tiny.md"))


@pytest.mark.parametrize("grid, fixed, message", [
    ({"nonexistent": [1, 2]}, {}, "nonexistent"),
    ({"seed": []}, {}, "'seed' has an empty list"),
    ({"seed": [0, "x"]}, {}, "parameter 'seed'"),
    ({"scale": ["big"]}, {}, "parameter 'scale'"),
    ({"seed": [0, 1]}, {"seed": 2}, "'seed' is both swept"),
    ({"seed": [0, 1]}, {"typo": 2}, "no parameter 'typo'"),
    ({}, {}, "grid is empty"),
])
def test_bad_grids_fail_before_any_run(notebooks, tmp_path, grid, fixed, message):
    with pytest.raises(run.ParameterError, match=message):
        sweep.run_sweep("1", grid, fixed, root=tmp_path / "runs", notebooks=notebooks, progress=False)
    assert not (tmp_path / "runs").exists()


def test_parse_grid():
    assert sweep.parse_grid([("seed", "0,1,2"), ("label", "a,b"), ("scale", "0.5, 2")]) == {
        "seed": [0, 1, 2], "label": ["a", "b"], "scale": [0.5, 2]}
    assert sweep.parse_grid([("extra", "[1,2],[3]")]) == {"extra": [[1, 2], [3]]}
    with pytest.raises(run.ParameterError, match="'seed' has an empty list"):
        sweep.parse_grid([("seed", "")])


def test_cli_sweep_bad_grid_names_the_parameter(notebooks, tmp_path):
    out = cli("sweep", "1", "-g", "sead", "0,1", "--root", str(tmp_path / "runs"), "--notebooks", str(notebooks), cwd=tmp_path)
    assert out.returncode == 2 and "'sead'" in out.stderr and "seed, pause, scale" in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sweep_on_two_workers_resumes_and_tabulates(notebooks, tmp_path):
    root = tmp_path / "runs"
    grid = {"seed": [0, 1, 2], "fail": [False, True]}
    first = sweep.run_sweep("1", grid, {"scale": 2}, root=root, workers=2, notebooks=notebooks, progress=False)
    assert len(first["ran"]) == 3 and len(first["failed"]) == 3 and not first["skipped"]
    assert all("asked to fail" in error for _, error in first["failed"])

    table = pd.read_parquet(root / "01_tiny" / "sweep.parquet")
    assert (root / "01_tiny" / "sweep.csv").exists()
    done = table[table["status"] == "complete"]
    assert len(done) == 6  # 3 runs x 2 rows of the closing table
    assert set(done["seed"]) == {0, 1, 2} and set(done["scale"]) == {2} and set(done["label"]) == {"a"}
    values = done[done["claim"] == "value"].set_index("seed")["this run"].astype(float)
    assert values.to_dict() == {0: 2.0, 1: 4.0, 2: 6.0}
    for column in ("duration_s", "git_commit", "code_version", "device", "versions"):
        assert done[column].notna().all(), column
    assert "torch" in json.loads(done["versions"].iloc[0])
    assert set(table[table["status"] == "failed"]["run"]) == {f"fail=True,scale=2,seed={s}" for s in range(3)}

    # an interrupted sweep: one run lost its result, another was killed mid-run (notebook, no run.json)
    lost = root / "01_tiny" / "fail=False,scale=2,seed=1"
    (lost / "run.json").unlink()
    killed = root / "01_tiny" / "fail=False,scale=2,seed=2"
    (killed / "run.json").unlink()
    (killed / "summary.csv").unlink()
    second = sweep.run_sweep("1", {"seed": [0, 1, 2], "fail": [False]}, {"scale": 2}, root=root, workers=2,
                             notebooks=notebooks, progress=False)
    assert sorted(Path(f).name for f in second["ran"]) == ["fail=False,scale=2,seed=1", "fail=False,scale=2,seed=2"]
    assert [Path(f).name for f in second["skipped"]] == ["fail=False,scale=2,seed=0"]
    assert not second["failed"]

    # a changed chapter is a new code version: nothing is reused
    source = notebooks / "01_tiny.md"
    source.write_text(source.read_text().replace("# A tiny chapter", "# A tiny chapter, edited"))
    plan = sweep.plan_sweep("1", {"seed": [0]}, {"scale": 2, "fail": False}, root=root, notebooks=notebooks)
    assert not plan["runs"][0]["done"]


def test_plot_sweep_draws_mean_and_band():
    import matplotlib
    matplotlib.use("Agg")
    table = pd.DataFrame({
        "n": [1, 1, 2, 2, 3], "seed": [0, 1, 0, 1, 0], "claim": ["value"] * 5,
        "this run": ["1.0", "1.2", "2.0", "2.4", "3"], "status": ["complete"] * 5,
    })
    ax = sweep.plot_sweep(table, "n", claim="value")
    line = ax.lines[0]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([1.1, 2.2, 3.0])
    assert len(ax.collections) == 1  # the band
    # text cells, as the chapters' closing tables hold them: the first number in the text
    table["this run"] = ["1 / 64 copies", "1.2 / 64", "distance 2e0", "2.4e0 x", "3"]
    ax = sweep.plot_sweep(table, "n", claim="value")
    assert list(ax.lines[0].get_ydata()) == pytest.approx([1.1, 2.2, 3.0])


@pytest.mark.slow
def test_sweep_killed_halfway_resumes(notebooks, tmp_path):
    """Kill a running `python -m mempkg sweep` (its whole process group) after its first run; rerun it."""
    root = tmp_path / "runs"
    args = [sys.executable, "-m", "mempkg", "sweep", "1", "-g", "seed", "0,1,2,3", "-p", "pause", "2.0",
            "--workers", "1", "--root", str(root), "--notebooks", str(notebooks)]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list(root.glob("01_tiny/*/run.json")):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended or stalled before its first run"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name for p in root.glob("01_tiny/*/run.json")}
    assert 1 <= len(finished) < 4
    assert not (root / "01_tiny" / "sweep.parquet").exists()

    out = cli("sweep", "1", "-g", "seed", "0,1,2,3", "-p", "pause", "2.0", "--workers", "2", "--root", str(root),
              "--notebooks", str(notebooks), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{4 - len(finished)} ran, {len(finished)} already complete (skipped), 0 failed" in out.stdout
    table = pd.read_parquet(root / "01_tiny" / "sweep.parquet")
    assert (table["status"] == "complete").all() and sorted(set(table["seed"])) == [0, 1, 2, 3]


@pytest.mark.slow
def test_sweep_on_an_existing_scheduler(notebooks, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = sweep.run_sweep("1", {"seed": [0, 1]}, root=tmp_path / "runs", scheduler=cluster.scheduler_address,
                                 notebooks=notebooks, progress=False)
    assert len(result["ran"]) == 2 and not result["failed"]
    assert len(pd.read_csv(tmp_path / "runs" / "01_tiny" / "sweep.csv")) == 4


def test_a_kernel_that_never_started_is_retried_but_a_failing_cell_is_not(notebooks, tmp_path, monkeypatch):
    """Two sweep workers can race for one TCP port; the losing run starts again (CI saw this once)."""
    calls, refused = [], []
    real = run.execute_chapter

    def flaky(source, output, parameters, cwd=None, progress=True):
        calls.append(1)
        if not refused:
            refused.append(1)
            raise RuntimeError("Kernel didn't respond in 60 seconds")
        return real(source, output, parameters, cwd=cwd, progress=progress)

    monkeypatch.setattr(run.random, "uniform", lambda a, b: 0.0)
    monkeypatch.setattr(run, "execute_chapter", flaky)
    record = run.execute_run(notebooks / "01_tiny.md", {"seed": 1}, tmp_path / "a")
    assert record["status"] == "complete" and record["attempts"] == 2 and len(calls) == 2
    assert not (tmp_path / "a" / "FAILED").exists()

    calls.clear()
    record = run.execute_run(notebooks / "01_tiny.md", {"fail": True}, tmp_path / "b")
    assert record["status"] == "failed" and record["attempts"] == 1 and len(calls) == 1
    assert "asked to fail" in record["error"]

    def never(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    calls.clear()
    monkeypatch.setattr(run, "execute_chapter", never)
    record = run.execute_run(notebooks / "01_tiny.md", {}, tmp_path / "c")
    assert record["status"] == "failed" and record["attempts"] == run.KERNEL_START_ATTEMPTS
    assert len(calls) == run.KERNEL_START_ATTEMPTS and (tmp_path / "c" / "FAILED").exists()
