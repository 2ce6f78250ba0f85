"""mempkg.retrieval: similarities by hand, the collage case, extractors, the loader, bad input.

One torch thread, as every test (tests/conftest.py).
"""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mempkg import retrieval as R

ROOT = Path(__file__).resolve().parent.parent


# --- closed forms ---------------------------------------------------------------------------------


def test_cosine_by_hand():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = torch.tensor([[24 / 25, 4 / 5, -3 / 5], [4 / 5, 0.0, -1.0]])
    torch.testing.assert_close(R.cosine(a, b), expected)
    # 3-D features are flattened: the same numbers
    torch.testing.assert_close(R.cosine(a[:, None, :], b[:, None, :]), expected)


def test_split_product_by_hand_global_and_chunk_normalisation():
    a = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # norm sqrt 2
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]])  # norms 1, 5
    # chunks of 2: a = (1, 0 | 0, 1)/sqrt2; b0 = (1, 0 | 0, 0); b1 = (0, 0 | 3, 4)/5
    expected = torch.tensor([[1 / math.sqrt(2), 4 / (5 * math.sqrt(2))]])
    torch.testing.assert_close(R.split_product(a, b, 2), expected)
    # per-chunk normalisation: b1's second chunk (3, 4)/5 against (0, 1): 4/5; b0: 1
    torch.testing.assert_close(R.split_product(a, b, 2, normalize="chunk"), torch.tensor([[1.0, 0.8]]))
    # one chunk is the cosine; the chunk products of global normalisation sum to the cosine
    torch.testing.assert_close(R.split_product(a, b, 1), R.cosine(a, b))


def test_split_product_takes_n_chunks_from_3d_features():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, 3, generator=g), torch.randn(7, 4, 3, generator=g)
    torch.testing.assert_close(R.split_product(a, b), R.split_product(a.flatten(1), b.flatten(1), 4))
    ca = torch.nn.functional.normalize(a.flatten(1), dim=1).reshape(5, 4, 3)
    cb = torch.nn.functional.normalize(b.flatten(1), dim=1).reshape(7, 4, 3)
    brute = torch.einsum("ncd,mcd->nmc", ca, cb).amax(2)
    torch.testing.assert_close(R.split_product(a, b), brute)


def test_collage_split_product_finds_both_sources_cosine_does_not():
    # two unrelated sources on disjoint chunks, a distractor spread over all chunks
    car = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    tree = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    distractor = torch.tensor([[0.6, 0.1, 0.6, 0.1]])
    train = torch.cat([car, tree, distractor])
    collage = car + tree  # left chunk from the car, right chunk from the tree
    cos = R.cosine(collage, train)[0]
    split = R.split_product(collage, train, 2, normalize="chunk")[0]
    assert cos.argmax() == 2  # the global similarity prefers the distractor
    assert torch.allclose(split[:2], torch.ones(2)) and split[2] < 1  # both sources score the maximum
    assert R.cosine(car, tree).item() == 0.0
    # p. 4: the cosines to the collage bound the sources' own similarity from below
    bound = R.triangle_bound(cos[0].item(), cos[1].item())
    assert bound <= R.cosine(car, tree).item()
    assert R.triangle_bound(0.95, 0.95) > 0.5  # both high would force unrelated sources to look alike


def test_top1_exclude_self_is_train_to_train():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    values, indices = R.top1(x, x)
    assert indices.tolist() == [0, 1, 2]  # every row matches itself
    values, indices = R.top1(x, x, exclude_self=True, chunk_size=2)  # the diagonal crosses chunks
    assert indices.tolist() == [1, 0, 1]
    torch.testing.assert_close(values, R.cosine(x, x)[[0, 1, 2], [1, 0, 1]])


def test_topk_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(50, 4, 6, generator=g), torch.randn(40, 4, 6, generator=g)
    for sim in ("cosine", "split_product"):
        v1, i1 = R.topk(q, t, 5, similarity=sim, chunk_size=7)
        v2, i2 = R.topk(q, t, 5, similarity=sim, chunk_size=1000)
        torch.testing.assert_close(v1, v2)
        assert torch.equal(i1, i2)
    full = R.similarity_matrix(q, t, "split_product", chunk_size=9)
    torch.testing.assert_close(full, R.split_product(q, t))


def test_wilson_interval_and_trend_test_closed_forms():
    low, high = R.wilson_interval(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-3  # z^2 / (n + z^2) with z = 1.96
    rate = R.replication_rate(torch.tensor([0.2, 0.6, 0.7, 0.4]))
    assert (rate.count, rate.n, rate.rate) == (2, 4, 0.5)
    z, p = R.trend_test([9, 5, 1], [10, 10, 10])
    assert z < -3 and p < 1e-3
    z, p = R.trend_test([5, 5, 5], [10, 10, 10])
    assert z == 0 and p == 1.0


def test_calibrated_threshold_has_the_stated_false_positive_rate():
    held = torch.linspace(0, 1, 1001, dtype=torch.float64)
    tau = R.calibrate_threshold(held, fpr=0.05)
    assert abs(tau - 0.95) < 1e-9
    assert abs(R.replication_rate(held, tau).rate - 0.05) < 2e-3


def test_overlap_of_identical_and_disjoint_samples():
    a = torch.linspace(0, 1, 200)
    assert R.overlap(a, a)["overlap"] == pytest.approx(1.0) and R.overlap(a, a)["ks"] == 0
    far = R.overlap(a, a + 5)
    assert far["overlap"] == 0 and far["ks"] == 1


def test_metrics_by_hand():
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    relevant = torch.tensor([[1, -1], [0, 2]])
    # query 0: source at rank 2 -> AP 1/2; query 1: sources at ranks 1 and 3 -> (1/1 + 2/3)/2
    assert R.mean_average_precision(sims, relevant) == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)
    ranked = sims.argsort(1, descending=True)
    assert R.recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert R.recall_at_k(ranked, relevant, 3) == 1.0


# --- behaviour ------------------------------------------------------------------------------------


def test_augment_is_seeded_and_stays_in_range():
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    a = R.augment(x, torch.Generator().manual_seed(0))
    b = R.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    still = R.augment(x, max_shift=0, max_rotation=0, noise=0, blur_prob=0, cutout=0)
    torch.testing.assert_close(still, x, atol=1e-5, rtol=0)


def test_extractors_are_deterministic_and_shaped():
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    px = R.pixel_extractor()
    assert px(x).shape == (10, 4, 16) and torch.equal(px(x), px(x))
    torch.testing.assert_close(px(x).flatten(1).norm(dim=1), torch.ones(10))
    r1, r2 = R.random_conv(seed=3), R.random_conv(seed=3)
    assert r1(x).shape == (10, 16, 32) and torch.equal(r1(x), r2(x))
    assert torch.equal(r1(x[:4]), r1(x)[:4])  # no batch dependence


def test_committed_copy_detector_loads_and_retrieves_augmented_copies():
    from mempkg.data import digits

    det = R.copy_detector()
    train = digits(n=200, seed=0)
    bench = R.replica_benchmark(train, "augment", n=100, generator=torch.Generator().manual_seed(0))
    _, idx = R.topk(det(bench.queries), det(train), 5)
    assert R.recall_at_k(idx, bench.sources, 5) > 0.8


def test_a_corrupt_copy_detector_is_refused(tmp_path):
    import shutil

    from mempkg.checkpoints import ChecksumError

    import json

    from mempkg.checkpoints import read_manifest

    shutil.copy(ROOT / "data" / f"{R.COPY_DETECTOR}.pt", tmp_path)
    entry = read_manifest(ROOT / "data" / "manifest.json")[R.COPY_DETECTOR]
    (tmp_path / "manifest.json").write_text(json.dumps({R.COPY_DETECTOR: entry}))
    blob = bytearray((tmp_path / f"{R.COPY_DETECTOR}.pt").read_bytes())
    blob[-10] ^= 0xFF
    (tmp_path / f"{R.COPY_DETECTOR}.pt").write_bytes(bytes(blob))
    with pytest.raises(ChecksumError):
        R.copy_detector(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        R.copy_detector(data_dir=tmp_path / "nowhere")


def test_replica_benchmark_kinds():
    train = torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    col = R.replica_benchmark(train, "collage", n=5, generator=g)
    a, b = col.sources[:, 0], col.sources[:, 1]
    assert bool((a != b).all())
    assert torch.equal(col.queries[:, :, :4], train[a][:, :, :4]) and torch.equal(col.queries[:, :, 4:], train[b][:, :, 4:])
    pat = R.replica_benchmark(train, "patch", n=5, patch=4, generator=g)
    from_a = (pat.queries == train[pat.sources[:, 0]]).flatten(1).sum(1)
    assert bool((from_a == 16).all())  # exactly the pasted 4x4 square comes from A
    aug = R.replica_benchmark(train, "augment", n=5, generator=g)
    assert bool((aug.sources[:, 1] == -1).all())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_loader_on_a_scripted_module_and_a_state_dict(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))  # (n, 4, 4, 4) map
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = net(x).flatten(2).transpose(1, 2)
    scripted = tmp_path / "tiny.torchscript.pt"
    torch.jit.save(torch.jit.script(net), str(scripted))
    ext = R.load_extractor(scripted)
    assert ext.name == "tiny.torchscript" and ext(x).shape == (3, 16, 4)
    torch.testing.assert_close(ext(x), expected)
    weights = tmp_path / "tiny_state.pt"
    torch.save(net.state_dict(), weights)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
    ext2 = R.load_extractor(weights, module=fresh, preprocess=lambda z: z)
    torch.testing.assert_close(ext2(x), expected)
    with pytest.raises(ValueError, match="TorchScript"):
        R.load_extractor(weights)
    with pytest.raises(ValueError, match="path"):
        R.load_extractor(tmp_path / "missing.pt")


def test_never_seen_and_replication_report():
    pool = torch.arange(10 * 4, dtype=torch.float32).reshape(10, 1, 2, 2)
    mask = R.never_seen(pool, pool[:3], pool[[2, 5]])
    assert mask.tolist() == [False, False, False, True, True, False, True, True, True, True]
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 2, 8, generator=g)
    held = torch.randn(200, 2, 8, generator=g)
    gen = train[:10] + 0.01 * torch.randn(10, 2, 8, generator=g)  # ten near-copies
    rep = R.replication_report(gen, train, held, fpr=0.05)
    assert rep.calibrated.count == 10 and rep.gen_index.tolist() == list(range(10))
    assert abs(R.replication_rate(rep.held, rep.threshold).rate - 0.05) <= 0.01
    assert rep.train.shape == (40,) and bool((rep.train < 1 - 1e-4).all())  # self excluded
    out = R.evaluate_retrieval(gen, train, torch.stack([torch.arange(10), torch.full((10,), -1)], 1))
    assert out["recall@1"] == 1.0 and out["mAP"] == 1.0 and out["all sources@5"] == 1.0


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_parameter():
    a, b = torch.randn(3, 6), torch.randn(4, 6)
    with pytest.raises(ValueError, match="n_chunks"):
        R.split_product(a, b, 4)
    with pytest.raises(ValueError, match="n_chunks"):
        R.split_product(a, b)  # 2-D features carry no chunk count
    with pytest.raises(ValueError, match="a and b"):
        R.cosine(a, torch.randn(4, 5))
    with pytest.raises(ValueError, match="empty"):
        R.cosine(torch.zeros(0, 6), b)
    with pytest.raises(ValueError, match="empty"):
        R.top1(a, torch.zeros(0, 6))
    with pytest.raises(ValueError, match="similarity"):
        R.top1(a, b, similarity="l2")
    with pytest.raises(ValueError, match="exclude_self"):
        R.top1(a, b, exclude_self=True)
    with pytest.raises(ValueError, match="k must"):
        R.topk(a, b, k=5)
    with pytest.raises(ValueError, match="normalize"):
        R.split_product(a, b, 2, normalize="none")
    with pytest.raises(ValueError, match="fpr"):
        R.calibrate_threshold(torch.rand(10), fpr=1.5)
    with pytest.raises(ValueError, match="heldout_scores"):
        R.calibrate_threshold(torch.zeros(0))
    with pytest.raises(ValueError, match="kind"):
        R.replica_benchmark(torch.rand(4, 1, 8, 8), "mixup")
    with pytest.raises(ValueError, match="patch"):
        R.pixel_extractor(patch=3)
    with pytest.raises(ValueError, match="counts and totals"):
        R.trend_test([1], [2])
    with pytest.raises(ValueError, match="relevant"):
        R.recall_at_k(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[-1], [0]]), 1)


@pytest.mark.slow
def test_benchmark_script_runs_with_tiny_arguments():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "retrieval.py"), "--n-query", "64", "--n-train", "50",
                          "--repeats", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ratio" in out.stdout


# --- CIFAR-10's 3x32x32 images ------------------------------------------------------------------


def test_extractors_and_the_copy_detector_on_3x32x32_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 32, 32, generator=g) * 2 - 1
    px = R.pixel_extractor(center=x, patch=16)  # a batch as centre: its mean
    assert px(x).shape == (20, 4, 768)
    torch.testing.assert_close(px(x), R.pixel_extractor(center=x.mean(0), patch=16)(x))
    with pytest.raises(ValueError, match="center"):
        R.pixel_extractor()(x)  # the digits centre does not fit, and says what to pass
    rc = R.random_conv(seed=1, in_channels=3, image_size=32)
    assert rc(x).shape == (20, 16, 32)
    torch.testing.assert_close(rc(x[:5]), rc(x)[:5])
    # the 8x8 network is the one the committed detector was saved with: same layers
    assert [type(m).__name__ for m in R.CopyDetectorNet().body] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    with torch.no_grad():  # chapter 8 trains it with gradients switched off globally
        net = R.train_copy_detector(x, n_steps=2, batch_size=8, progress=False)
    assert len(net.history) == 2 and all(math.isfinite(v) for v in net.history)
    assert R.Extractor(net, "cd")(x).shape == (20, 16, 32)


def test_augment_scales_its_defaults_with_the_image_size():
    g = torch.Generator().manual_seed(0)
    digits_like = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    a = R.augment(digits_like, torch.Generator().manual_seed(1))
    b = R.augment(digits_like, torch.Generator().manual_seed(1), max_shift=0.5, cutout=2)
    assert torch.equal(a, b)  # 8x8: the defaults are those of the committed detector
    big = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    c = R.augment(big, torch.Generator().manual_seed(1))
    d = R.augment(big, torch.Generator().manual_seed(1), max_shift=2.0, cutout=8)
    assert torch.equal(c, d) and c.shape == big.shape and c.min() >= -1 and c.max() <= 1
    bench = R.replica_benchmark(big, "patch", n=4, patch=16, generator=g)
    from_a = (bench.queries == big[bench.sources[:, 0]]).flatten(1).sum(1)
    assert bool((from_a >= 3 * 16 * 16).all())


def test_never_seen_compares_pixels_exactly_on_large_images():
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (50, 3, 32, 32), generator=g).float() / 127.5 - 1
    train = pool[[1, 7, 7, 30]].clone()
    train[0, 0, 0, 0] = -0.0 if pool[1, 0, 0, 0] == 0 else train[0, 0, 0, 0]
    mask = R.never_seen(pool, train, pool[[40]])
    assert (~mask).nonzero().flatten().tolist() == [1, 7, 30, 40]
    near = pool[[2]] + 1e-6  # not equal: seen only when every pixel is
    assert bool(R.never_seen(pool, near)[2])


def test_imagenet_preprocess():
    pre = R.imagenet_preprocess(16)
    grey = torch.full((2, 1, 8, 8), 1.0)  # white
    out = pre(grey)
    assert out.shape == (2, 3, 16, 16)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 5, 5], expected)
    assert R.imagenet_preprocess(None)(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="images"):
        pre(torch.zeros(1, 2, 8, 8))
