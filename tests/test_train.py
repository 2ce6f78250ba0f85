"""Networks, denoising score matching, resumable training, checkpoints and their manifest."""
import json

import pytest
import torch

from mempkg import VPSDE, checkpoints
from mempkg.data import DataRecipe, Duplication, held_out, training_set
from mempkg.nets import MLPScoreNet, UNet, build_net
from mempkg.score import EmpiricalScore, NetworkScore
from mempkg.train import TrainConfig, dsm_loss, train_score_model

SDE = VPSDE()


@pytest.mark.parametrize("net", [MLPScoreNet((1, 8, 8), hidden=32, n_blocks=2), UNet((1, 8, 8), base=8),
                                 UNet((3, 32, 32), base=8)], ids=["mlp", "unet8", "unet32"])
def test_networks_map_x_and_t_to_the_shape_of_x(net):
    x = torch.randn(3, *net.data_shape)
    assert net(x, 0.5).shape == x.shape
    assert net(x, torch.tensor([0.1, 0.5, 0.9])).shape == x.shape
    rebuilt = build_net(net.config)
    rebuilt.load_state_dict(net.state_dict())
    assert torch.allclose(rebuilt(x, 0.3), net(x, 0.3))


def test_one_time_for_the_batch_equals_per_example_times():
    torch.manual_seed(0)
    net = MLPScoreNet((1, 4, 4), hidden=16, n_blocks=2)
    x = torch.randn(5, 1, 4, 4)
    assert torch.allclose(net(x, 0.3), net(x, torch.full((5,), 0.3)), atol=1e-6)


class Constant(torch.nn.Module):
    """A fake network returning a fixed tensor, to check the parameterisations."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.data_shape = tuple(value.shape[1:])

    def forward(self, x, t):
        return self.value.expand_as(x)


def test_network_score_parameterizations_follow_tweedie():
    x = torch.randn(4, 3, dtype=torch.float64)
    out = torch.randn(1, 3, dtype=torch.float64)
    t = 0.4
    a, s, v = SDE.alpha(t), SDE.sigma(t), SDE.v(t)
    eps = NetworkScore(Constant(out), SDE, "eps")
    assert torch.allclose(eps(x, t), -out / s)
    assert torch.allclose(eps.predict_x0(x, t), (x - s * out) / a)
    x0 = NetworkScore(Constant(out), SDE, "x0")
    assert torch.allclose(x0(x, t), (a * out - x) / v)
    assert torch.allclose(x0.predict_eps(x, t), (x - a * out) / s)
    # the two readings agree when the eps and x0 predictions are consistent
    assert torch.allclose(NetworkScore(Constant(x0.predict_eps(x, t)), SDE, "eps")(x, t), x0(x, t))
    with pytest.raises(ValueError, match="parameterization"):
        NetworkScore(Constant(out), SDE, "v")


def test_dsm_loss_is_smallest_at_the_exact_denoiser():
    train = torch.randn(6, 2, dtype=torch.float64)
    exact = EmpiricalScore(train, SDE)

    class Oracle(torch.nn.Module):
        def __init__(self, shift=0.0):
            super().__init__()
            self.shift = shift

        def forward(self, x, t):
            return exact.posterior_mean(x, t) + self.shift

    losses = [dsm_loss(Oracle(shift), train.repeat(2000, 1), SDE, "x0", generator=torch.Generator().manual_seed(0)).item()
              for shift in (0.0, 0.05, -0.05)]
    assert losses[0] < losses[1] and losses[0] < losses[2]


def test_training_reduces_the_loss_and_resumes_exactly(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = torch.randn(16, 1, 4, 4)
    torch.manual_seed(0)
    straight = MLPScoreNet((1, 4, 4), hidden=32, n_blocks=1)
    resumed = MLPScoreNet((1, 4, 4), hidden=32, n_blocks=1)
    resumed.load_state_dict(straight.state_dict())
    kw = dict(batch_size=32, progress=False, log_every=100, parameterization="eps", lr=3e-3)
    history = train_score_model(straight, data, SDE, 400, **kw)
    assert history[-1][1] < 0.8 * history[0][1]
    ckpt = tmp_path / "run.ckpt"
    train_score_model(resumed, data, SDE, 200, checkpoint=ckpt, checkpoint_every=50, **kw)
    history2 = train_score_model(resumed, data, SDE, 400, checkpoint=ckpt, checkpoint_every=50, **kw)
    torch.set_num_threads(threads)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert history2 == history


@pytest.mark.parametrize("kwargs,name", [(dict(n_steps=0), "n_steps"), (dict(parameterization="v"), "parameterization"),
                                         (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size")])
def test_training_arguments_are_checked(kwargs, name):
    net = MLPScoreNet((2,), hidden=4, n_blocks=1)
    with pytest.raises(ValueError, match=name):
        train_score_model(net, torch.zeros(3, 2), SDE, **({"n_steps": 1} | kwargs))


def test_committed_checkpoints_load_and_match_their_manifest():
    manifest = checkpoints.read_manifest()
    cifar = set(checkpoints.CIFAR10_COUNTERPARTS.values())       # trained by the user on a GPU, not committed
    assert set(manifest) == set(checkpoints.RECIPES) - cifar | set(checkpoints.ARTIFACTS)
    for name, entry in manifest.items():
        assert checkpoints.sha256(checkpoints.DATA_DIR / entry["file"]) == entry["sha256"]
        if name in checkpoints.ARTIFACTS:
            assert entry["command"] == checkpoints.ARTIFACTS[name]
            continue
        assert entry["command"] == f"python -m mempkg train {name}"
        recipe = checkpoints.RECIPES[name]
        assert entry["recipe"] == recipe.to_dict(), "the manifest records the recipe the registry holds"
        if isinstance(recipe, checkpoints.ClassifierRecipe):
            net = checkpoints.load_classifier(name)
            x = training_set(checkpoints.RECIPES[recipe.target].data)[:2]
            assert net(x, torch.full((2,), 0.5)).shape == (2, recipe.net["n_classes"])
            continue
        score = checkpoints.load_model(name)
        assert score.parameterization == recipe.train.parameterization
        x = training_set(recipe.data)[:2]
        assert score(x, 0.5).shape == x.shape


def test_a_corrupt_checkpoint_is_refused(tmp_path):
    name = next(iter(checkpoints.RECIPES))
    entry = checkpoints.read_manifest()[name]
    blob = bytearray((checkpoints.DATA_DIR / entry["file"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / entry["file"]).write_bytes(bytes(blob))
    (tmp_path / "manifest.json").write_text(json.dumps({name: entry}))
    with pytest.raises(checkpoints.ChecksumError, match="sha256"):
        checkpoints.load_model(name, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m mempkg train"):
        checkpoints.load_model(name, data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="name must be one of"):
        checkpoints.load_model("no-such-model")


def test_train_recipe_writes_a_verifiable_checkpoint(tmp_path, monkeypatch):
    tiny = checkpoints.Recipe(
        "tiny", "tiny", DataRecipe("digits", dict(n=8, seed=0), Duplication(n=2, times=3, seed=0)),
        dict(kind="mlp", data_shape=[1, 8, 8], hidden=8, n_blocks=1, time_dim=8),
        TrainConfig(n_steps=3, batch_size=4, lr=1e-3, parameterization="eps", snr_cap=5.0, t_min=1e-3, seed=0),
        init_seed=0, threads=1)
    monkeypatch.setitem(checkpoints.RECIPES, "tiny", tiny)
    with pytest.warns(DeprecationWarning, match="training_set"):
        assert checkpoints.training_data("tiny").shape == (12, 1, 8, 8)        # the deprecated spelling
    path = checkpoints.train_recipe("tiny", out_dir=tmp_path, progress=False)
    entry = json.loads((tmp_path / "manifest.json").read_text())["tiny"]
    assert entry["sha256"] == checkpoints.sha256(path) and entry["recipe"] == tiny.to_dict()
    assert entry["recipe"]["data"]["duplicate"] == dict(n=2, times=3, seed=0)
    assert isinstance(checkpoints.load_model("tiny", data_dir=tmp_path), NetworkScore)


def test_held_out_images_were_never_trained_on():
    spec = checkpoints.RECIPES["digits64_x0"].data
    train = training_set(spec)
    held = held_out(spec, n=30, seed=1)
    assert held.shape == (60, 1, 8, 8)                                          # flips appended
    assert not (held.flatten(1)[:, None] == train.flatten(1)[None]).all(2).any()


def test_the_epsilon_control_differs_from_the_overfitted_model_only_by_parameterization_and_size():
    x0, eps = checkpoints.RECIPES["digits64_x0"], checkpoints.RECIPES["digits32_eps"]
    assert eps.net == x0.net and eps.train.parameterization == "eps" != x0.train.parameterization
    assert eps.data.options == dict(x0.data.options, n=32)                     # digits and their flips
    train, held = training_set(eps.data), held_out(eps.data, n=32, seed=0)
    assert train.shape == held.shape == (64, 1, 8, 8)
    assert not (held.flatten(1)[:, None] == train.flatten(1)[None]).all(2).any()


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="time_dim must be even"):
        MLPScoreNet((2,), time_dim=5)
    with pytest.raises(ValueError, match="base must be divisible"):
        UNet((1, 8, 8), base=12, groups=8)


def test_training_refuses_to_resume_a_checkpoint_of_other_settings(tmp_path):
    net = MLPScoreNet((2,), hidden=4, n_blocks=1, time_dim=4)
    x = torch.randn(8, 2)
    train_score_model(net, x, SDE, n_steps=2, batch_size=4, progress=False, checkpoint=tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="other settings"):
        train_score_model(net, x, SDE, TrainConfig(4, batch_size=4, lr=0.5), progress=False,
                          checkpoint=tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="snr_cap"):
        train_score_model(net, x, SDE, n_steps=2, snr_cap=-1.0, progress=False)
    with pytest.raises(ValueError, match="t_min"):
        TrainConfig(2, t_min=2.0)
    with pytest.raises(TypeError, match="not both"):
        train_score_model(net, x, SDE, TrainConfig(2), lr=0.1)


def test_a_config_and_its_keywords_train_the_same_network():
    data = torch.randn(8, 2)
    nets = []
    for use_config in (True, False):
        torch.manual_seed(0)
        net = MLPScoreNet((2,), hidden=8, n_blocks=1, time_dim=4)
        if use_config:
            train_score_model(net, data, SDE, TrainConfig(20, batch_size=4, lr=1e-2, seed=3), progress=False)
        else:
            train_score_model(net, data, SDE, n_steps=20, batch_size=4, lr=1e-2, seed=3, progress=False)
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)


def test_a_student_recipe_distils_its_teacher_on_samples_of_its_target(tmp_path, monkeypatch):
    """A tiny teacher and TDKD student trained from recipes, verified, loaded, with their synthetic set."""
    tiny_net = dict(kind="resnet_classifier", data_shape=[1, 8, 8], n_classes=10, width=4, n_blocks=1, time_dim=8)
    teacher = checkpoints.ClassifierRecipe("tiny_teacher", "t", target="digits64_x0", kind="teacher",
                                           net=dict(tiny_net, time_dependent=False), n_steps=3, batch_size=8,
                                           threads=1)
    student = checkpoints.ClassifierRecipe("tiny_student", "s", target="digits64_x0", kind="student",
                                           net=dict(tiny_net, time_dependent=True), n_steps=3, batch_size=8,
                                           teacher="tiny_teacher", n_synthetic=6, sample_steps=2, threads=1)
    monkeypatch.setitem(checkpoints.RECIPES, "tiny_teacher", teacher)
    monkeypatch.setitem(checkpoints.RECIPES, "tiny_student", student)
    checkpoints.train_recipe("tiny_teacher", out_dir=tmp_path, progress=False)
    checkpoints.train_recipe("tiny_student", out_dir=tmp_path, progress=False)
    net = checkpoints.load_classifier("tiny_student", data_dir=tmp_path)
    assert net.time_dependent and net(torch.zeros(2, 1, 8, 8), 0.5).shape == (2, 10)
    synthetic = checkpoints.synthetic_set("tiny_student", data_dir=tmp_path)
    assert synthetic.shape == (6, 1, 8, 8)
    assert torch.equal(synthetic, checkpoints.synthetic_set("tiny_student", retrain=True)), "the recipe's draw"
    with pytest.raises(ValueError, match="classifier"):
        checkpoints.load_model("tiny_student", data_dir=tmp_path)
    with pytest.raises(ValueError, match="score model"):
        checkpoints.load_classifier("digits64_x0")

