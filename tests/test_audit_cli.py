"""`python -m mempkg audit` end to end: a committed digit model, a TorchScript network, a diffusers folder.

Behaviour first (tables, ranks, costs, the report, resuming), then every bad input: it must stop with
one line and a non-zero exit before any work, leaving ``--out`` absent or as it was.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from mempkg import audit

MODEL = "digits64_x0"                        # committed in data/ (8x8 digits, x0-prediction)
MEASURES = "volume_growth_cheap,flipd,copies,cosine,distance_to_mean"
CHEAP = ["--n-generate", "200", "--chunk-size", "12", "--measures", MEASURES]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mempkg", "audit", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def digits_npy(tmp_path):
    x = (load_digits().data[:32].reshape(32, 8, 8) / 8 - 1).astype("float32")
    np.save(tmp_path / "train.npy", x)
    return tmp_path / "train.npy"


@pytest.fixture
def audited(digits_npy, tmp_path):
    """One audit of 32 digits in chunks of 12 (three chunks, the last of 8) into tmp_path/out."""
    out = cli("--model", MODEL, "--train", str(digits_npy), "--out", "out", *CHEAP, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp_path / "out"


def img_sources(html):
    return re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)


def test_audit_of_a_committed_model_writes_tables_and_a_self_contained_report(audited):
    names = MEASURES.split(",")
    table = pd.read_parquet(audited / "measures.parquet")
    assert len(table) == 32 and list(table.index) == list(range(32))
    assert list(table.columns) == names + [f"{m}_rank" for m in names]
    ranks = audit.memorization_ranks(table[names]).add_suffix("_rank")
    pd.testing.assert_frame_equal(table[ranks.columns], ranks)
    assert np.allclose(table.to_numpy(), pd.read_csv(audited / "measures.csv", index_col=0).to_numpy())
    cost = pd.read_csv(audited / "cost.csv", index_col=0)
    assert list(cost.index) == ["generations", *names]
    assert cost.loc["generations", "score_evaluations"] >= 200 * 50        # 200 ODE samples, 50+ steps
    assert cost.loc["flipd", "score_evaluations"] >= 32 and (cost["seconds"] >= 0).all()
    assert cost.loc["flipd", "memorized"] == "low" and cost.loc["copies", "memorized"] == "high"
    assert tuple(torch.load(audited / ".chunks" / "generations.pt").shape) == (200, 1, 8, 8)

    html = (audited / "report.html").read_text()
    sources = img_sources(html)
    assert len(sources) == 16 + 16 + 1                      # two galleries and the heat map
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert "mean of the 5 ranks" in html and "Spearman" in html
    top = audit.consensus_rank(table[names]).index[:16]
    shown = [int(i) for i in re.findall(r'alt="training image (\d+)"', html)[:16]]
    assert shown == [int(i) for i in top]                   # the first gallery is the consensus top 16
    assert not list(audited.glob(".*.tmp")) and not list((audited / ".chunks").glob(".*.tmp"))


def test_a_deleted_chunk_is_the_only_one_recomputed_and_the_pool_is_reused(audited, digits_npy, tmp_path):
    chunks = audited / ".chunks"
    kept = {p.name: p.stat().st_mtime_ns for p in [*chunks.glob("chunk_*.parquet"), chunks / "generations.pt"]}
    assert len(kept) == 3 + 1                               # 32 images in chunks of 12, and the pool
    (chunks / "chunk_00001.parquet").unlink()
    before = pd.read_parquet(audited / "measures.parquet")
    out = cli("--model", MODEL, "--train", str(digits_npy), "--out", "out", *CHEAP, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in [*chunks.glob("chunk_*.parquet"), chunks / "generations.pt"]}
    assert {n for n in kept if after[n] != kept[n]} == {"chunk_00001.parquet"}
    pd.testing.assert_frame_equal(before, pd.read_parquet(audited / "measures.parquet"))


def test_an_interrupted_audit_keeps_its_finished_chunks_and_resumes(digits_npy, tmp_path, monkeypatch):
    calls = []
    measure_table = audit.measure_table

    def interrupted_at_the_second_chunk(*args, **kwargs):
        calls.append(kwargs["subset"][0].item())
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure_table(*args, **kwargs)

    monkeypatch.setattr(audit, "measure_table", interrupted_at_the_second_chunk)
    run = dict(model=MODEL, train=str(digits_npy), out=tmp_path / "out", measures=["flipd", "distance_to_mean"],
               chunk_size=12, progress=False)
    with pytest.raises(KeyboardInterrupt):
        audit.run_audit(**run)
    chunks = tmp_path / "out" / ".chunks"
    assert sorted(p.name for p in chunks.glob("chunk_*")) == ["chunk_00000.parquet"]
    assert not (tmp_path / "out" / "measures.csv").exists()
    counted = []
    monkeypatch.setattr(audit, "measure_table", lambda *a, **k: counted.append(k["subset"][0].item())
                        or measure_table(*a, **k))
    written = audit.run_audit(**run)
    assert counted == [12, 24]                              # the first chunk was not measured again
    assert len(pd.read_csv(written["measures.csv"])) == 32


def test_a_failure_before_anything_is_finished_leaves_no_folder(digits_npy, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(audit, "measure_table", broken)
    with pytest.raises(RuntimeError):
        audit.run_audit(MODEL, str(digits_npy), tmp_path / "out", ["flipd"], chunk_size=12, progress=False)
    assert not (tmp_path / "out").exists()


class TinyEps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * 0.1 + t.reshape(-1, 1, 1, 1) * 0.01


def test_audit_of_a_torchscript_noise_network(digits_npy, tmp_path):
    torch.manual_seed(0)
    net = TinyEps()
    torch.jit.script(net).save(str(tmp_path / "net.pt"))
    out = cli("--model", "net.pt", "--train", str(digits_npy), "--out", "ts",
              "--measures", "volume_growth_cheap,flipd,nearest_generation", "--n-generate", "20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "ts" / "measures.csv")) == 32
    # the network is read as a noise prediction at continuous t: score = -eps / sigma(t)
    score = audit.load_score(str(tmp_path / "net.pt"))
    x, t = torch.from_numpy(np.load(digits_npy))[:3, None], 0.3
    with torch.no_grad():
        expected = -net(x, torch.full((3,), t)) / score.sde.sigma(torch.tensor(t))
        assert torch.allclose(score(x, t), expected, atol=1e-6)


def test_audit_of_a_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    unet.save_pretrained(tmp_path / "model" / "unet")
    diffusers.DDIMScheduler().save_pretrained(tmp_path / "model" / "scheduler")
    torch.save(torch.rand(12, 1, 8, 8) * 2 - 1, tmp_path / "train.pt")
    out = cli("--model", "model", "--train", "train.pt", "--out", "hf", "--measures",
              "volume_growth_cheap,flipd,nearest_generation", "--n-generate", "20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "hf" / "measures.csv")) == 12
    assert len(img_sources((tmp_path / "hf" / "report.html").read_text())) == 12 + 12 + 1


def write_folder(folder, arrays):
    from PIL import Image

    folder.mkdir()
    for k, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{k}.png")


def gray(size, value=128):
    return np.full((size, size), value, dtype=np.uint8)


def test_an_image_folder_is_read_in_minus_one_to_one(tmp_path):
    write_folder(tmp_path / "imgs", [gray(8), gray(8, 255)])
    x = audit.load_images(str(tmp_path / "imgs"))
    assert tuple(x.shape) == (2, 1, 8, 8)
    assert torch.allclose(x[0], torch.full_like(x[0], 128 / 127.5 - 1), atol=1e-6) and torch.allclose(x[1], torch.ones_like(x[1]))
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    write_folder(tmp_path / "mixed_modes", [gray(8, 0), rgb])            # grey and colour: read as RGB
    x = audit.load_images(str(tmp_path / "mixed_modes"))
    assert tuple(x.shape) == (2, 3, 8, 8) and torch.allclose(x[0], -torch.ones_like(x[0]))
    assert torch.allclose(x[1, 0], torch.ones(8, 8)) and torch.allclose(x[1, 1:], -torch.ones(2, 8, 8))


def test_uint8_tensors_are_scaled_and_float_tensors_kept(tmp_path):
    np.save(tmp_path / "u8.npy", np.array([[[0, 255]]], dtype=np.uint8))
    torch.save(torch.tensor([[[[0.25]]]]), tmp_path / "f.pt")
    assert audit.load_images(str(tmp_path / "u8.npy")).flatten().tolist() == [-1.0, 1.0]
    assert audit.load_images(str(tmp_path / "f.pt")).flatten().tolist() == [0.25]


@pytest.mark.parametrize("make, args, message", [
    (None, ["--model", MODEL, "--train", "missing.npy"], "--train: missing.npy does not exist"),
    (None, ["--model", "no_such_model", "--train", "train.npy"], "--model: no_such_model is neither a recipe"),
    (None, ["--model", "train.npy", "--train", "train.npy"], "--model: train.npy is not a TorchScript file"),
    (None, ["--model", MODEL, "--train", "train.npy", "--measures", "flipd,volume"], "--measures: unknown"),
    (None, ["--model", MODEL, "--train", "train.npy", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    (None, ["--model", MODEL, "--train", "cifar10:nowhere"], "--train: CIFAR-10 not found"),
    ("small", ["--model", MODEL, "--train", "small.npy"], "cannot take images of shape|returns shape"),
    ("dict", ["--model", MODEL, "--train", "dict.pt"], "holds a dict, not a tensor"),
    ("mixed", ["--model", MODEL, "--train", "mixed"], "mixed sizes"),
    ("not_model", ["--model", "notamodel", "--train", "train.npy"], "is a folder but not a diffusers model"),
    ("other", ["--model", MODEL, "--train", "train.npy"], "is not empty and holds no audit"),
    ("file", ["--model", MODEL, "--train", "train.npy"], "is a file, not a folder"),
])
def test_bad_input_stops_before_any_work_and_leaves_out_alone(digits_npy, tmp_path, make, args, message):
    if make == "small":
        np.save(tmp_path / "small.npy", np.zeros((4, 4, 4), dtype="float32"))
    if make == "dict":
        torch.save({"images": torch.zeros(4, 1, 8, 8)}, tmp_path / "dict.pt")
    if make == "mixed":
        write_folder(tmp_path / "mixed", [gray(8), gray(8), gray(6)])
    if make == "not_model":
        (tmp_path / "notamodel").mkdir()
    if make == "other":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
    if make == "file":
        (tmp_path / "out").write_text("mine")
    out = cli(*args, "--out", "out", cwd=tmp_path)
    assert out.returncode == 2
    assert re.search(message, out.stderr), out.stderr[-1000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")       # one line, no traceback
    if make == "other":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    elif make == "file":
        assert (tmp_path / "out").read_text() == "mine"
    else:
        assert not (tmp_path / "out").exists()


def test_cuda_is_refused_where_there_is_none(digits_npy, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = cli("--model", MODEL, "--train", str(digits_npy), "--out", "out", "--device", "cuda", cwd=tmp_path)
    assert out.returncode == 2 and "--device: cuda" in out.stderr and not (tmp_path / "out").exists()


def test_resuming_with_other_settings_or_data_is_refused(audited, digits_npy, tmp_path):
    settings = json.loads((audited / ".chunks" / "settings.json").read_text())
    assert settings["n_generate"] == 200 and settings["chunk_size"] == 12 and len(settings["train_sha256"]) == 64
    files = {p: p.stat().st_mtime_ns for p in audited.rglob("*")}
    out = cli("--model", MODEL, "--train", str(digits_npy), "--out", "out", "--n-generate", "50",
              "--chunk-size", "12", "--measures", MEASURES, cwd=tmp_path)
    assert out.returncode == 2 and "other settings (n_generate: 200 there, 50 now)" in out.stderr
    np.save(digits_npy, np.load(digits_npy)[::-1].copy())                 # same path, other images
    out = cli("--model", MODEL, "--train", str(digits_npy), "--out", "out", *CHEAP, cwd=tmp_path)
    assert out.returncode == 2 and "train_sha256" in out.stderr
    assert files == {p: p.stat().st_mtime_ns for p in audited.rglob("*")}   # untouched


def test_the_report_without_generations_or_a_second_measure(digits_npy, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    images = torch.from_numpy(np.load(digits_npy))[:, None]
    table = pd.DataFrame({"distance_to_mean": np.arange(32.0)}, index=pd.RangeIndex(32, name="image"))
    cost = pd.DataFrame({"seconds": [0.1], "score_evaluations": [0], "memorized": ["low"], "source": ["control"]},
                        index=["distance_to_mean"])
    path = audit.write_report(table, cost, images, tmp_path / "r.html", title="<one> measure")
    html = path.read_text()
    assert len(img_sources(html)) == 32 and "One measure only" in html and "&lt;one&gt; measure" in html
    assert [int(i) for i in re.findall(r'alt="training image (\d+)"', html)[:3]] == [0, 1, 2]   # low = memorized
    two = table.assign(flipd=-table["distance_to_mean"])
    assert audit.agreement(two).loc["flipd", "distance_to_mean"] == pytest.approx(-1.0)
    assert matplotlib.get_backend() == backend                              # the caller's backend is left alone


def test_the_report_opens_in_chromium_with_every_image(audited):
    from test_browser import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed: `sudo apt-get install -y chromium`")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page()
        requests, errors = [], []
        page.on("request", lambda req: requests.append(req.url))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto((audited / "report.html").as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate("() => Array.from(document.images).map(img => img.complete && img.naturalWidth > 0)")
        browser.close()
    assert len(loaded) == 33 and all(loaded)
    assert all(url.startswith(("file:", "data:")) for url in requests) and not errors
