"""CIFAR-10 and a GPU through parameters (issue 12): the 32x32 recipes, the U-Net, and every chapter
that loads a model run on a tiny CIFAR-format copy with tiny models, all written by the tests.

No GPU exists here: ``device="cuda"`` is not executed; the chapters and the training loop are run
with ``device="cpu"`` through the same code path (every tensor follows ``device``).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from mempkg import checkpoints, data, run
from mempkg.nets import CIFAR10_UNET, MLPScoreNet, UNet, build_net

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_fixture import TINY, train_tiny_models, write_tiny_cifar  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Tiny knobs per chapter for a run on the tiny copy (besides dataset, data_root, checkpoint_dir).
CIFAR_SMOKE = {
    # ch11-13: random-pixel models copy nothing at 1/3 (calibrated l2 ~ 1.94-1.97): the threshold 1.955
    # splits copies from the rest, which the AUCs need
    "11_lid_on_images": dict(n_generate=48, n_sample_steps=2, t0_grid=[0.05, 0.1], n_probes=1, nb_samples=16,
                             n_nb=16, n_neighbors=5, n_boot=20, threshold=1.955, batch_size=16),
    "12_conditioning_and_cfg": dict(n_per_class=4, n_sample_steps=2, n_lid=2, lid_probes=1, cfg_steps=1,
                                    n_trajectories=2, metric_steps=4, exact_steps=50, n_boot=20, threshold=1.955,
                                    batch_size=2),
    "13_every_detector": dict(n_exact=4, n_point_masses=2, n_generate=8, n_independent=8, n_side=8,
                              side_clusters=2, n_draws=2, n_boot=20, n_sample_steps=2, volume_axes=1,
                              volume_steps=1, step_axes=1, n_bundle=4, trace_probes=1, threshold=1.955),
    "04_overfitted_model": dict(n_generate=16, n_sample_steps=2, n_axes=2, n_steps=3, sweep_points=2, sweep_steps=1,
                                sweep_axes=[1, 2], n_axis_seeds=1, control_axes=1, n_boot=20, batch_size=8),
    # random-pixel models copy nothing at 1/3: a looser threshold gives the two groups chapter 5 compares
    "05_memorized_vs_unmemorized": dict(n_generate=40, n_sample_steps=2, threshold=1.96, n_compare=6,
                                        axes_sweep=[1, 2], n_steps=3, n_axis_seeds=1, control_axes=1, n_boot=20,
                                        batch_size=16),
    "07_side": dict(n_steps=2, n_random=40, n_per_lambda=10, lambda_grid=[0, 2], band_factors=[1.0], n_oracle=64,
                    cluster_grid=[2, 5], n_per_k=10, n_toy=100, batch_size=16),
    "08_replication_by_retrieval": dict(n_generate=40, n_sample_steps=2, n_bench=20, n_generate_dup=40, n_gallery=4,
                                        detector_steps=2, batch_size=16),
}

#: The chapters that load a trained model: each accepts dataset="cifar10".
MODEL_CHAPTERS = ("04_overfitted_model", "05_memorized_vs_unmemorized", "07_side", "08_replication_by_retrieval",
                  "11_lid_on_images", "12_conditioning_and_cfg", "13_every_detector")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    root = write_tiny_cifar(tmp_path_factory.mktemp("cifar"))
    return root, train_tiny_models(root, root / "models")


# --- the network -------------------------------------------------------------------------------------


def test_the_cifar_unet_is_ddpms_size():
    net = build_net(CIFAR10_UNET)
    n = sum(p.numel() for p in net.parameters())
    assert 35.7e6 <= n < 35.8e6, "Ho et al. (2020) report 35.7 M parameters for their CIFAR-10 model"
    x = torch.randn(2, 3, 32, 32)
    assert net.eval()(x, torch.tensor([0.1, 0.9])).shape == x.shape


def test_unet_levels_classes_and_errors():
    net = UNet((3, 32, 32), base=8, channel_mult=(1, 2, 2), n_res_blocks=2, attention=[8], n_classes=10, groups=4)
    x = torch.randn(3, 3, 32, 32)
    out_c, out_null = net(x, 0.3, torch.tensor([0, 1, 10])), net(x, 0.3)
    assert out_c.shape == out_null.shape == x.shape
    assert torch.allclose(net(x[2:], 0.3, 10), out_null[2:], atol=1e-5), "label n_classes is the null class"
    with pytest.raises(ValueError, match="unconditional"):
        UNet((1, 8, 8), base=8)(torch.randn(1, 1, 8, 8), 0.5, 3)
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet((3, 30, 30), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="dropout"):
        UNet((1, 8, 8), dropout=1.0)
    rebuilt = build_net(net.config)
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(x, 0.3), out_null)


# --- recipes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(checkpoints.RECIPES))
def test_a_recipe_survives_its_manifest_form(name):
    recipe = checkpoints.RECIPES[name]
    assert type(recipe).from_dict(name, json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_every_model_of_a_chapter_has_a_32x32_counterpart():
    for digits_name, cifar_name in checkpoints.CIFAR10_COUNTERPARTS.items():
        assert checkpoints.for_dataset(digits_name, "digits") == digits_name
        assert checkpoints.for_dataset(digits_name, "cifar10") == cifar_name
        assert checkpoints.for_dataset(cifar_name, "cifar10") == cifar_name
        recipe = checkpoints.RECIPES[cifar_name]
        assert recipe.net["data_shape"] == [3, 32, 32]
        digits = checkpoints.RECIPES[digits_name]
        if isinstance(recipe, checkpoints.Recipe):
            assert recipe.data.name.startswith("cifar10")
            assert recipe.train.parameterization == digits.train.parameterization
            assert bool(recipe.net.get("n_classes")) == bool(digits.net.get("n_classes"))
    with pytest.raises(ValueError, match="no CIFAR-10 counterpart"):
        checkpoints.for_dataset("vonmises_x0", "cifar10")
    with pytest.raises(ValueError, match="dataset must be one of"):
        checkpoints.for_dataset("digits64_x0", "imagenet")


def test_with_settings_replaces_and_refuses_by_name():
    recipe = checkpoints.RECIPES["cifar10_1000_x0"]
    small = checkpoints.with_settings(recipe, {"n_steps": 5, "net.base": 16, "data.n": 40, "init_seed": 3})
    assert (small.train.n_steps, small.net["base"], small.data.n, small.init_seed) == (5, 16, 40, 3)
    assert small.data.duplicate == recipe.data.duplicate and small.train.lr == recipe.train.lr
    assert checkpoints.with_settings(recipe, None) is recipe
    with pytest.raises(ValueError, match="'n_step'"):
        checkpoints.with_settings(recipe, {"n_step": 5})
    with pytest.raises(ValueError, match="'net.width'"):
        checkpoints.with_settings(recipe, {"net.width": 5})
    with pytest.raises(ValueError, match="'net.channel_mult'"):           # a U-Net setting, not the MLP's
        checkpoints.with_settings(checkpoints.RECIPES["digits64_x0"], {"net.channel_mult": [1, 2]})
    student = checkpoints.with_settings(checkpoints.RECIPES["cifar10_1000_side_student"], {"n_synthetic": 8})
    assert student.n_synthetic == 8
    assert checkpoints.parse_setting("net.channel_mult=[1, 2]") == ("net.channel_mult", [1, 2])
    assert checkpoints.parse_setting("description=a b") == ("description", "a b")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        checkpoints.parse_setting("n_steps")


def test_training_cost_counts_an_mlp_by_hand():
    """A residual MLP's forward pass is its matrix products: 2 FLOPs per weight per example."""
    cost = checkpoints.training_cost("digits64_x0")
    net = MLPScoreNet(**{k: v for k, v in checkpoints.RECIPES["digits64_x0"].net.items() if k != "kind"})
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert cost["forward_flops"] == 2 * weights
    recipe = checkpoints.RECIPES["digits64_x0"]
    assert cost["total_flops"] == 3 * cost["forward_flops"] * recipe.train.batch_size * recipe.train.n_steps
    assert checkpoints.gpu_hours(3600 * 1e12, peak=1e12, utilisation=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="utilisation"):
        checkpoints.gpu_hours(1.0, utilisation=0.0)
    big = checkpoints.training_cost("cifar10_64_x0")
    assert big["parameters"] == sum(p.numel() for p in build_net(CIFAR10_UNET).parameters())
    assert 10e9 < big["forward_flops"] < 15e9, "DDPM's CIFAR-10 U-Net costs about 12 GFLOP per image"


def test_held_out_images_are_never_training_images():
    for name in ("digits64_x0", "digits1000_x0", "digits_rare3_x0"):
        spec = checkpoints.RECIPES[name].data
        train, held = data.training_set(spec, distinct=True), data.held_out(spec)
        assert not (held.flatten(1)[:, None] == train.flatten(1)[None]).all(2).any()
        unique = torch.unique(data.digits().flatten(1), dim=0)
        n_train = torch.unique(train[: len(train) // 2] if spec.options.get("flip") else train, dim=0).shape[0]
        per = 2 if spec.options.get("flip") else 1
        assert held.shape[0] >= per * (unique.shape[0] - n_train) - 20     # every unseen digit is offered


# --- the command line --------------------------------------------------------------------------------


def _train_cli(*args):
    return subprocess.run([sys.executable, "-m", "mempkg", "train", *args], capture_output=True, text=True, cwd=ROOT)


def test_train_cli_checks_before_training(tmp_path):
    out = _train_cli("cifar10_64_x0", "--out", str(tmp_path))
    assert out.returncode == 2 and "--data-root" in out.stderr
    out = _train_cli("digits64_x0", "--set", "n_steps=2")
    assert out.returncode == 2 and "--out" in out.stderr
    out = _train_cli("digits64_x0", "--set", "steps=2", "--out", str(tmp_path))
    assert out.returncode == 2 and "'steps'" in out.stderr
    assert list(tmp_path.iterdir()) == []
    out = _train_cli("cifar10_64_x0", "--cost")
    assert out.returncode == 0 and "35,746,307 parameters" in out.stdout and "A100" in out.stdout


# --- tiny models on the tiny copy ----------------------------------------------------------------------


def test_tiny_models_record_the_recipe_they_were_trained_with(tiny_cifar):
    root, models = tiny_cifar
    manifest = checkpoints.read_manifest(models / "manifest.json")
    assert set(manifest) == set(TINY)
    recipe = checkpoints.recipe_of("cifar10_1000_x0", models)
    assert recipe.data.n == TINY["cifar10_1000_x0"]["data.n"] and recipe.train.n_steps == 3
    assert checkpoints.recipe_of("cifar10_1000_x0") is checkpoints.RECIPES["cifar10_1000_x0"]
    score = checkpoints.load_model("cifar10_1000_x0", data_dir=models)
    train = data.training_set(recipe.data, distinct=True, data_root=root)
    assert train.shape == (40, 3, 32, 32) and score(train[:2], 0.5).shape == (2, 3, 32, 32)
    assert data.training_set(recipe.data, data_root=root).shape[0] == 40 + 20 * 9
    labels = data.training_labels(checkpoints.recipe_of("cifar10_rare3_x0", models).data, data_root=root)
    assert labels.bincount().tolist() == [10, 10, 10, 3, 10, 10, 10, 10, 10, 10]
    assert checkpoints.synthetic_set("cifar10_1000_side_student", data_dir=models).shape == (64, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="cifar10_64_x0"):
        checkpoints.load_model("cifar10_64_x0", data_dir=root)


def test_the_manifest_command_re_creates_the_checkpoint(tiny_cifar, tmp_path):
    """The command a manifest records, run again, gives the same file (same machine, same threads)."""
    root, models = tiny_cifar
    entry = checkpoints.read_manifest(models / "manifest.json")["cifar10_64_x0"]
    args = entry["command"].split()[4:]                    # after `python -m mempkg train`
    args[args.index("--out") + 1] = str(tmp_path)
    out = _train_cli(*args)
    assert out.returncode == 0, out.stderr
    assert checkpoints.sha256(tmp_path / "cifar10_64_x0.pt") == entry["sha256"]


@pytest.mark.parametrize("chapter", MODEL_CHAPTERS)
def test_a_model_chapter_takes_dataset_and_data_root(chapter):
    names = set(run.chapter_parameters(run.find_chapter(chapter)))
    assert {"dataset", "data_root", "checkpoint_dir", "device", "retrain"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("chapter", sorted(CIFAR_SMOKE))
def test_a_chapter_runs_on_cifar10(chapter, tiny_cifar, tmp_path):
    root, models = tiny_cifar
    parameters = dict(dataset="cifar10", data_root=str(root), checkpoint_dir=str(models), **CIFAR_SMOKE[chapter])
    output = run.run_chapter(chapter, parameters, root=tmp_path, progress=False)
    nb = nbformat.read(output, as_version=4)
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    summary = pd.read_csv(output.parent / "summary.csv")
    assert list(summary.columns) == ["claim", "source", "paper", "this run", "verdict", "why"]
    assert len(summary) > 0
    assert math.isfinite(nb.metadata.papermill.duration)


def test_a_cpu_generator_gives_the_same_draws_on_any_device():
    """A seeded CPU generator with device="cuda" draws on the CPU and moves (torch.randn refuses a CPU
    generator for a CUDA tensor); "meta" stands in for a device that is not the generator's."""
    from mempkg import VPSDE
    from mempkg._random import rand, randint, randn

    g = torch.Generator().manual_seed(0)
    x = randn((3, 4), g, torch.float64, "meta")
    assert x.device.type == "meta" and x.shape == (3, 4) and x.dtype == torch.float64
    assert rand((2,), g, device="meta").device.type == randint(0, 5, (2,), g, "meta").device.type == "meta"
    a = VPSDE().prior_sample((2, 3), generator=torch.Generator().manual_seed(1), device="cpu")
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(1)))


def test_the_audit_reads_a_recipe_trained_elsewhere(tiny_cifar, tmp_path):
    """`mempkg audit --model DIR/NAME.pt --train cifar10:ROOT`: a CIFAR-10 model from its own folder."""
    from mempkg import audit

    root, models = tiny_cifar
    score = audit.load_score(str(models / "cifar10_1000_x0.pt"))
    assert score.data_shape == (3, 32, 32)
    out = subprocess.run([sys.executable, "-m", "mempkg", "audit", "--model", str(models / "cifar10_1000_x0.pt"),
                          "--train", f"cifar10:{root}", "--out", str(tmp_path / "audit"), "--n-generate", "8",
                          "--measures", "volume_growth_cheap,flipd,distance_to_mean", "--chunk-size", "200"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "audit" / "measures.csv")
    assert len(table) == 300 and {"volume_growth_cheap", "flipd", "distance_to_mean"} <= set(table.columns)
