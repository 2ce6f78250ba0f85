"""Benchmark: batched volume growth against a per-point loop of Algorithm 1, and ranking cost.

Prints, in one run on this machine:

1. the time of ``mempkg.volume.volume_growth`` (batched over points and axes) and of
   ``volume_growth_loop`` (Algorithm 1 written literally, one point at a time, as the paper's code
   does) on the same inputs and the same initial axes, their ratio, and the largest difference of
   their results;
2. the time to rank all 1,797 digits with the paper's cheapest variant (N = 1 axis, one step).

Both use the committed partly-memorizing model of chapter 5 (``digits1000_x0``). Timings vary by
about +-30 % on a shared machine; the ratio is measured within one run.

    .venv/bin/python benchmarks/volume_growth.py [--points 16] [--axes 64] [--steps 20]
"""
import argparse
import time

import torch

from mempkg import VPSDE, checkpoints
from mempkg.data import digits
from mempkg.volume import volume_growth, volume_growth_loop


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--axes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    score = checkpoints.load_model("digits1000_x0")
    x0 = checkpoints.training_data("digits1000_x0", distinct=True)[: args.points]
    kw = dict(n_axes=args.axes, sigma=0.05, n_steps=args.steps)

    with torch.no_grad():
        volume_growth(score, x0[:2], sde, **kw, generator=torch.Generator().manual_seed(0))   # warm-up
        batched, t_batched = timed(lambda: volume_growth(score, x0, sde, **kw, generator=torch.Generator().manual_seed(0)))
        loop, t_loop = timed(lambda: volume_growth_loop(score, x0, sde, **kw, generator=torch.Generator().manual_seed(0)))
    diff = (batched.log_growth - loop).abs().max().item()
    print(f"volume growth, {args.points} points x {args.axes} axes x {args.steps} Euler steps, {args.threads} threads")
    print(f"  batched volume_growth : {t_batched:8.3f} s")
    print(f"  per-point loop (Alg. 1): {t_loop:8.3f} s")
    print(f"  speed-up (loop / batched): {t_loop / t_batched:.1f}x   max |difference| of log l: {diff:.2e}")

    everything = digits()
    with torch.no_grad():
        ranked, t_rank = timed(lambda: volume_growth(score, everything, sde, n_axes=1, n_steps=1, t_start=1e-3,
                                                     t_end=2e-3, generator=torch.Generator().manual_seed(0)))
    print(f"ranking all {len(everything)} digits with N = 1 and one step (t = 1e-3 -> 2e-3): {t_rank:.3f} s "
          f"({1e3 * t_rank / len(everything):.3f} ms per image)")
    assert torch.isfinite(ranked.total).all()


if __name__ == "__main__":
    main()
