"""Benchmark: the cost of the LID estimators relative to one forward and backward pass.

Prints, in one run on this machine, for the committed digit model ``digits1000_x0`` (an MLP score
network on 8x8 digits, d = 64):

* the time per point of one forward + backward pass of the network (the unit);
* FLIPD per point with 1 and 8 Hutchinson probes and with the exact trace, in that unit;
* the normal-bundle estimator per point (K = 4d = 256 scores and an SVD), in that unit.

Timings vary by about +-30 % on a shared machine; the ratios are measured within one run.

    .venv/bin/python benchmarks/lid.py [--points 64] [--threads 2]
"""
import argparse
import time

import torch

from mempkg import VPSDE, checkpoints
from mempkg.lid import flipd, normal_bundle


def per_point(fn, n, repeats=3):
    fn()                                    # warm-up: first calls set up forward-mode AD
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    score = checkpoints.load_model("digits1000_x0")
    x = checkpoints.training_data("digits1000_x0", distinct=True)[: args.points]
    g = torch.Generator().manual_seed(0)

    def forward_backward():
        inp = x.clone().requires_grad_(True)
        score(inp, 0.05).sum().backward()

    unit = per_point(forward_backward, len(x))
    rows = {
        "FLIPD, 1 probe": per_point(lambda: flipd(score, x, sde, n_probes=1, generator=g), len(x)),
        "FLIPD, 8 probes": per_point(lambda: flipd(score, x, sde, n_probes=8, generator=g), len(x)),
        "FLIPD, exact trace (64 JVPs)": per_point(lambda: flipd(score, x, sde, n_probes=None), len(x)),
        "normal bundle (K = 256, SVD)": per_point(lambda: normal_bundle(score, x[:8], sde, generator=g), 8, repeats=1),
    }
    print(f"digits1000_x0 (d = 64), {len(x)} points, {args.threads} threads")
    print(f"  forward + backward pass : {1e3 * unit:8.4f} ms per point (the unit)")
    for name, seconds in rows.items():
        print(f"  {name:29s}: {1e3 * seconds:8.4f} ms per point = {seconds / unit:7.1f} x forward+backward")


if __name__ == "__main__":
    main()
