"""`python -m mempkg audit` end to end: a committed digit model, a TorchScript network, a diffusers folder."""

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

CHEAP = ["--n-generate", "100", "--chunk-size", "16", "--measures", "flipd,copies,cosine,distance_to_mean"]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mempkg", "audit", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def digits_npy(tmp_path):
    x = (load_digits().data[:40].reshape(40, 8, 8) / 8 - 1).astype("float32")
    np.save(tmp_path / "train.npy", x)
    return tmp_path / "train.npy"


def test_audit_of_a_committed_model_writes_tables_and_a_self_contained_report(digits_npy, tmp_path):
    out = cli("--model", "digits64_x0", "--train", str(digits_npy), "--out", "out", *CHEAP, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_parquet(tmp_path / "out" / "measures.parquet")
    assert len(table) == 40 and {"flipd", "flipd_rank", "copies", "distance_to_mean_rank"} <= set(table.columns)
    assert table.equals(pd.read_csv(tmp_path / "out" / "measures.csv", index_col=0)) or \
        np.allclose(table.to_numpy(), pd.read_csv(tmp_path / "out" / "measures.csv", index_col=0).to_numpy())
    cost = pd.read_csv(tmp_path / "out" / "cost.csv", index_col=0)
    assert list(cost.index) == ["flipd", "copies", "cosine", "distance_to_mean"]
    html = (tmp_path / "out" / "report.html").read_text()
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)
    assert len(images) == 16 + 16 + 1                      # two galleries and the heat map
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_a_deleted_chunk_is_the_only_one_recomputed(digits_npy, tmp_path):
    args = ("--model", "digits64_x0", "--train", str(digits_npy), "--out", "out", *CHEAP)
    assert cli(*args, cwd=tmp_path).returncode == 0
    chunks = tmp_path / "out" / ".chunks"
    kept = {p.name: p.stat().st_mtime_ns for p in chunks.glob("chunk_*.parquet")}
    assert len(kept) == 3                                   # 40 images in chunks of 16
    (chunks / "chunk_00001.parquet").unlink()
    before = pd.read_parquet(tmp_path / "out" / "measures.parquet")
    assert cli(*args, cwd=tmp_path).returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in chunks.glob("chunk_*.parquet")}
    assert after["chunk_00000.parquet"] == kept["chunk_00000.parquet"]
    assert after["chunk_00002.parquet"] == kept["chunk_00002.parquet"]
    assert after["chunk_00001.parquet"] != kept["chunk_00001.parquet"]
    pd.testing.assert_frame_equal(before, pd.read_parquet(tmp_path / "out" / "measures.parquet"))


class TinyEps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * 0.1 + t.reshape(-1, 1, 1, 1) * 0.01


def test_audit_of_a_torchscript_noise_network(digits_npy, tmp_path):
    torch.jit.script(TinyEps()).save(str(tmp_path / "net.pt"))
    out = cli("--model", str(tmp_path / "net.pt"), "--train", str(digits_npy), "--out", "ts",
              "--measures", "flipd,distance_to_mean", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "ts" / "measures.csv")) == 40


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


def write_folder(folder, sizes):
    from PIL import Image

    folder.mkdir()
    for k, size in enumerate(sizes):
        Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).save(folder / f"{k}.png")


@pytest.mark.parametrize("make, args, message", [
    (None, ["--model", "digits64_x0", "--train", "missing.npy"], "does not exist"),
    (None, ["--model", "no_such_model", "--train", "train.npy"], "neither a recipe"),
    (None, ["--model", "digits64_x0", "--train", "train.npy", "--measures", "flipd,volume"], "unknown"),
    ("small", ["--model", "digits64_x0", "--train", "small.npy"], "cannot take images|returns shape"),
    ("mixed", ["--model", "digits64_x0", "--train", "mixed"], "mixed sizes"),
    ("other", ["--model", "digits64_x0", "--train", "train.npy"], "not empty"),
])
def test_bad_input_stops_before_any_work_and_leaves_out_alone(digits_npy, tmp_path, make, args, message):
    if make == "small":
        np.save(tmp_path / "small.npy", np.zeros((4, 4, 4), dtype="float32"))
    if make == "mixed":
        write_folder(tmp_path / "mixed", [8, 8, 6])
    if make == "other":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
    out = cli(*args, "--out", "out", cwd=tmp_path)
    assert out.returncode == 2
    assert re.search(message, out.stderr), out.stderr[-1000:]
    if make == "other":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    else:
        assert not (tmp_path / "out").exists()


def test_an_image_folder_is_read_in_minus_one_to_one(tmp_path):
    write_folder(tmp_path / "imgs", [8, 8])
    x = audit.load_images(str(tmp_path / "imgs"))
    assert tuple(x.shape) == (2, 1, 8, 8) and torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-6)


def test_resuming_with_other_settings_is_refused(digits_npy, tmp_path):
    assert cli("--model", "digits64_x0", "--train", str(digits_npy), "--out", "out", *CHEAP,
               cwd=tmp_path).returncode == 0
    settings = json.loads((tmp_path / "out" / ".chunks" / "settings.json").read_text())
    assert settings["n_generate"] == 100
    out = cli("--model", "digits64_x0", "--train", str(digits_npy), "--out", "out", "--n-generate", "50",
              cwd=tmp_path)
    assert out.returncode == 2 and "not empty" in out.stderr


def test_the_report_opens_in_chromium_with_every_image(digits_npy, tmp_path):
    from test_browser import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed: `sudo apt-get install -y chromium`")
    playwright = pytest.importorskip("playwright.sync_api")
    assert cli("--model", "digits64_x0", "--train", str(digits_npy), "--out", "out", *CHEAP,
               cwd=tmp_path).returncode == 0
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page()
        requests = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto((tmp_path / "out" / "report.html").as_uri())
        widths = page.evaluate("() => Array.from(document.images).map(img => img.naturalWidth)")
        browser.close()
    assert len(widths) == 33 and min(widths) > 0
    assert all(url.startswith(("file:", "data:")) for url in requests)
