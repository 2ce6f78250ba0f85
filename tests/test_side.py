"""SIDE (seed 002, Section 4): the oracle noisy posterior in closed form, TDKD, guided sampling, labels."""
import math

import pytest
import torch

from mempkg import VPSDE, EmpiricalScore, GaussianScore, MixtureScore
from mempkg.nets import ResNetClassifier
from mempkg.side import (OracleClassifier, accuracy_vs_time, draw_labels, kmeans_labels, random_labels,
                         side_sample, tdkd, train_classifier)

SDE = VPSDE()
F64 = torch.float64


def test_the_oracle_is_the_posterior_of_the_teacher_labels_over_the_synthetic_set():
    """With one-hot teacher labels, p^t(y | x) is the posterior mass of the synthetic points of class y."""
    g = torch.Generator().manual_seed(0)
    synthetic = torch.randn(12, 1, 2, 2, generator=g, dtype=F64)
    labels = torch.arange(12) % 3
    oracle = OracleClassifier(synthetic, torch.nn.functional.one_hot(labels, 3).to(F64), SDE)
    x = torch.randn(5, 1, 2, 2, generator=g, dtype=F64)
    w = EmpiricalScore(synthetic, SDE).posterior_weights(x, 0.3)
    expected = torch.stack([w[:, labels == c].sum(1) for c in range(3)], 1)
    assert torch.allclose(oracle(x, 0.3).exp(), expected, atol=1e-12)
    soft = torch.softmax(torch.randn(12, 3, generator=g, dtype=F64), 1)
    assert torch.allclose(OracleClassifier(synthetic, soft, SDE)(x, 0.3).exp(), w @ soft, atol=1e-12)


def test_guiding_with_the_oracle_at_scale_one_gives_the_score_of_the_class_mixture():
    """s + grad log p^t(c | x) = grad log [ sum_{i in c} N(x; alpha y_i, v I) ], the class's own score."""
    g = torch.Generator().manual_seed(1)
    synthetic = torch.randn(10, 1, 2, 2, generator=g, dtype=F64)
    labels = torch.arange(10) % 2
    oracle = OracleClassifier(synthetic, torch.nn.functional.one_hot(labels, 2).to(F64), SDE)
    from mempkg.score import GuidedScore

    x = torch.randn(4, 1, 2, 2, generator=g, dtype=F64)
    guided = GuidedScore(EmpiricalScore(synthetic, SDE), oracle, 1, scale=1.0)(x, 0.2)
    own = EmpiricalScore(synthetic[labels == 1], SDE)(x, 0.2)
    assert torch.allclose(guided, own, atol=1e-9)


def test_tdkd_student_approaches_the_oracle_and_the_teacher_learns_separable_classes():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-1.0], [1.0]]).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    labels = torch.arange(200) % 2
    x = centres[labels] + 0.2 * torch.randn(200, 1, 4, 4, generator=g)
    teacher = ResNetClassifier((1, 4, 4), 2, width=8, n_blocks=1)
    train_classifier(teacher, x, labels, n_steps=150, batch_size=64, lr=3e-3, progress=False)
    assert accuracy_vs_time(teacher, x, labels, SDE, [0.0])[0] > 0.95
    student = ResNetClassifier((1, 4, 4), 2, width=8, n_blocks=1, time_dependent=True)
    history = tdkd(student, teacher, x, SDE, n_steps=300, batch_size=64, lr=3e-3, progress=False)
    assert history[-1][1] < history[0][1]
    acc_student = accuracy_vs_time(student, x, labels, SDE, [0.05, 0.3], generator=torch.Generator().manual_seed(2))
    acc_teacher = accuracy_vs_time(teacher, x, labels, SDE, [0.05, 0.3], generator=torch.Generator().manual_seed(2))
    assert acc_student[0] > 0.9 and acc_student[1] >= acc_teacher[1] - 0.05


def test_side_sample_moves_samples_towards_the_label():
    """Guiding a two-point empirical model with the oracle towards class 1 yields class-1 samples."""
    train = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64).reshape(2, 1, 1, 2)
    score = EmpiricalScore(train, SDE)
    oracle = OracleClassifier(train, torch.eye(2, dtype=F64), SDE)
    out = side_sample(score, oracle, torch.ones(40, dtype=torch.long), 4.0, 40, SDE, n_steps=40, dtype=F64,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (40, 1, 1, 2) and (out[..., 0] > 0).all()
    plain = side_sample(score, oracle, 1, 0.0, 40, SDE, n_steps=40, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert 5 < int((plain[..., 0] > 0).sum()) < 35, "scale 0 is the unconditional model"
    sde_out = side_sample(score, oracle, 1, 4.0, 10, SDE, n_steps=60, sampler="sde", dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    assert (sde_out[..., 0] > 0).all()


def test_labels_kmeans_random_and_balanced():
    assert draw_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    p = torch.tensor([0.0, 1.0, 0.0])
    assert set(draw_labels(20, 3, "proportional", p, torch.Generator().manual_seed(0)).tolist()) == {1}
    r = random_labels(10, 5, seed=1)
    assert torch.bincount(r).tolist() == [2, 2, 2, 2, 2]
    x = torch.cat([torch.zeros(5, 1, 2, 2), torch.ones(5, 1, 2, 2)])
    k = kmeans_labels(x, 2)
    assert len(set(k[:5].tolist())) == 1 and len(set(k[5:].tolist())) == 1 and k[0] != k[5]


def test_bad_arguments_raise_naming_the_parameter():
    train = torch.zeros(2, 1, 1, 2, dtype=F64)
    oracle = OracleClassifier(train, torch.eye(2, dtype=F64), SDE)
    score = EmpiricalScore(train, SDE)
    with pytest.raises(ValueError, match="scale"):
        side_sample(score, oracle, 0, -1.0, 4, SDE)
    with pytest.raises(ValueError, match="labels"):
        side_sample(score, oracle, 5, 1.0, 4, SDE)
    with pytest.raises(ValueError, match="labels"):
        side_sample(score, oracle, torch.zeros(3, dtype=torch.long), 1.0, 4, SDE)
    with pytest.raises(ValueError, match="sampler"):
        side_sample(score, oracle, 0, 1.0, 4, SDE, sampler="ddim")
    with pytest.raises(ValueError, match="teacher_probs"):
        OracleClassifier(train, torch.eye(3, dtype=F64), SDE)
    with pytest.raises(ValueError, match="how"):
        draw_labels(4, 2, "sometimes")
    with pytest.raises(ValueError, match="probs"):
        draw_labels(4, 2, "proportional")
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_labels(torch.zeros(3, 1, 2, 2), 5)
    with pytest.raises(ValueError, match="labels must have shape"):
        train_classifier(ResNetClassifier((1, 2, 2), 2, width=4, n_blocks=1), torch.zeros(4, 1, 2, 2),
                         torch.zeros(3, dtype=torch.long), n_steps=1, progress=False)
    with pytest.raises(ValueError, match="time-dependent"):
        tdkd(ResNetClassifier((1, 2, 2), 2, width=4, n_blocks=1), oracle, torch.zeros(4, 1, 2, 2), SDE, n_steps=1)


def test_guided_score_at_scale_one_is_the_class_conditional_score_of_a_mixture():
    """Closed form: Gaussian classes with exact posteriors; s + grad log p(c | x) = score of class c."""
    from mempkg.score import GuidedScore
    from mempkg.side import ClassPosterior

    means = [torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([-1.0, 1.5], dtype=F64)]
    covs = [torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64), torch.eye(2, dtype=F64) * 0.2]
    comps = [GaussianScore(m, c, SDE) for m, c in zip(means, covs)]
    mixture = MixtureScore(comps, [0.7, 0.3])
    posterior = ClassPosterior(mixture, [0, 1])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (0.05, 0.4):
        for c in (0, 1):
            assert torch.allclose(GuidedScore(mixture, posterior, c, 1.0)(x, t), comps[c](x, t), atol=1e-10)
        labels = torch.tensor([0, 1, 1, 0, 1, 0])
        both = GuidedScore(mixture, posterior, labels, 1.0)(x, t)
        assert torch.allclose(both, torch.stack([comps[int(c)](x[i:i + 1], t)[0] for i, c in enumerate(labels)]),
                              atol=1e-10)
    assert torch.equal(GuidedScore(mixture, posterior, 0, 0.0)(x, 0.3), mixture(x, 0.3))


def test_guided_score_works_inside_the_no_grad_samplers_and_checks_its_arguments():
    from mempkg.sampling import sample_ode, sample_sde
    from mempkg.score import GuidedScore
    from mempkg.side import ClassPosterior

    mixture = MixtureScore([GaussianScore(torch.tensor([3.0, 0.0], dtype=F64), torch.eye(2, dtype=F64) * 0.1, SDE),
                            GaussianScore(torch.tensor([-3.0, 0.0], dtype=F64), torch.eye(2, dtype=F64) * 0.1, SDE)])
    guided = GuidedScore(mixture, ClassPosterior(mixture, [0, 1]), 1, 1.0)
    for draw in (sample_ode, sample_sde):
        x = draw(guided, (50, 2), SDE, n_steps=100, dtype=F64, generator=torch.Generator().manual_seed(0))
        assert (x[:, 0] < 0).all(), "class 1 lives at x < 0"
    with pytest.raises(ValueError, match="scale"):
        GuidedScore(mixture, ClassPosterior(mixture, [0, 1]), 0, -1.0)
    with pytest.raises(ValueError, match="label"):
        GuidedScore(mixture, ClassPosterior(mixture, [0, 1]), 2, 1.0)
    with pytest.raises(ValueError, match="one class per point"):
        GuidedScore(mixture, ClassPosterior(mixture, [0, 1]), torch.tensor([0, 1]), 1.0)(torch.zeros(3, 2, dtype=F64), 0.5)


def test_draws_follow_the_generator_and_come_back_on_the_cpu():
    """Labels and noise are drawn on the generator's device (a CUDA generator on the GPU); a CPU
    generator gives exactly the draws of torch's CPU functions, so results on the CPU are unchanged."""
    probs = torch.tensor([0.2, 0.5, 0.3])
    lab = draw_labels(50, 3, "proportional", probs, generator=torch.Generator().manual_seed(4))
    expected = torch.multinomial(probs.double(), 50, replacement=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(lab, expected) and lab.device.type == "cpu"
    uni = draw_labels(20, 4, "uniform", generator=torch.Generator().manual_seed(1))
    assert torch.equal(uni, torch.randint(4, (20,), generator=torch.Generator().manual_seed(1)))
    # accuracy on noised images: the same noise as drawn on the CPU before
    x = torch.randn(30, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    y = (x.flatten(1).sum(1) > 0).long()

    def clf(z, t=None):
        s = z.flatten(1).sum(1, keepdim=True)
        return torch.cat([-s, s], 1)

    acc = accuracy_vs_time(clf, x, y, SDE, [0.0, 0.4], generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    by_hand = (clf(SDE.perturb(x, 0.4, noise=noise)).argmax(1) == y).double().mean()
    assert acc[0] == 1.0 and acc[1].item() == pytest.approx(by_hand.item())


def test_extraction_scores_take_tensors_on_any_device_and_report_on_the_cpu():
    from mempkg.metrics import calibrate_bands
    from mempkg.side import extraction_scores

    g = torch.Generator().manual_seed(0)
    gamma, nearest = torch.rand(40, generator=g), torch.randint(5, (40,), generator=g)
    bands = calibrate_bands(torch.rand(100, generator=g) + 0.5)
    table = extraction_scores(gamma, nearest, bands, n_boot=20)
    assert list(table.index) == ["low", "mid", "high"] and int(table.n.iloc[0]) == 40
