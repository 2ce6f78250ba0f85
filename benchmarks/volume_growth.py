"""Benchmark: volume growth against the bare score evaluations it needs, and against Algorithm 1's loop.

Prints, in one run on this machine, on the committed partly-memorizing model of chapter 5
(``digits1000_x0``, an MLP score network on 8x8 digits):

1. for each method (``paper``, ``qr``, ``jvp``) and number of axes N, the time of
   ``mempkg.volume.volume_growth`` divided by the time of the bare score evaluations it needs:
   ``n_steps`` calls of the score on the ``batch * (N + 1)`` points (centre and offset points)
   for ``paper``/``qr``; for ``jvp``, ``n_steps`` calls on the ``batch`` centres plus one on the
   ``batch * N`` points the tangents are attached to (what finite differences would cost). The
   ratio is the overhead of everything else (the ODE step, QR, logs, sorting): 1.0 is the limit.
2. the batched ``volume_growth`` against ``volume_growth_loop`` (Algorithm 1 written literally,
   one point at a time, as the paper's code does) on the same inputs and initial axes: their
   ratio and the largest difference of their results;
3. the time to rank all 1,797 digits with the paper's cheapest variant (N = 1 axis, one step).

Timings vary by about +-30 % on a shared machine; each ratio is measured within one run (the best
of ``--repeats``), never asserted.

    .venv/bin/python benchmarks/volume_growth.py [--batch 32] [--steps 50] [--threads 1]
"""
import argparse

import torch

from mempkg import VPSDE, checkpoints, data
from mempkg.ode import time_grid
from mempkg.volume import volume_growth, volume_growth_loop

from _timing import best_of  # benchmarks/_timing.py, beside this script


def bare_evaluations(score, x0, n_axes, taus, method):
    """The score calls volume growth cannot avoid, on inputs of the same sizes and times."""
    b, shape = x0.shape[0], x0.shape[1:]
    many = x0.repeat_interleave(n_axes + (method != "jvp"), dim=0) + 0.01
    centre = x0.clone()

    def run():
        with torch.no_grad():
            for t in taus[:-1]:
                if method == "jvp":
                    score(centre, t)
                    score(many, t)
                else:
                    score(many.reshape(-1, *shape), t)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--axes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--loop-points", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    recipe = checkpoints.RECIPES["digits1000_x0"]
    score = checkpoints.load_model(recipe.name)
    x0 = data.training_set(recipe.data, distinct=True)[: args.batch]
    taus = time_grid(1e-3, 1.0, args.steps, "log").tolist()

    print(f"volume growth on {recipe.name}: batch {args.batch}, {args.steps} Euler steps, {args.threads} thread(s)")
    print("  method  N    volume_growth   bare score calls   ratio (1.0 = only the score)")
    for method in ("paper", "qr", "jvp"):
        for n_axes in args.axes:
            run = lambda: volume_growth(score, x0, sde, n_axes=n_axes, n_steps=args.steps, method=method,  # noqa: E731
                                        generator=torch.Generator().manual_seed(0))
            t_vg = best_of(run, args.repeats)
            t_bare = best_of(bare_evaluations(score, x0, n_axes, taus, method), args.repeats)
            print(f"  {method:6s} {n_axes:3d} {t_vg:12.3f} s {t_bare:14.3f} s {t_vg / t_bare:13.2f}x")

    pts, n_axes = x0[: args.loop_points], args.axes[0]
    kw = dict(n_axes=n_axes, sigma=0.05, n_steps=args.steps)
    batched = volume_growth(score, pts, sde, **kw, generator=torch.Generator().manual_seed(0))
    loop = volume_growth_loop(score, pts, sde, **kw, generator=torch.Generator().manual_seed(0))
    t_batched = best_of(lambda: volume_growth(score, pts, sde, **kw, generator=torch.Generator().manual_seed(0)), 1)
    t_loop = best_of(lambda: volume_growth_loop(score, pts, sde, **kw, generator=torch.Generator().manual_seed(0)), 1,
                     warm_up=False)
    diff = (batched.log_growth - loop).abs().max().item()
    print(f"batched vs Algorithm 1's per-point loop, {len(pts)} points x {n_axes} axes x {args.steps} steps:")
    print(f"  batched volume_growth : {t_batched:8.3f} s")
    print(f"  per-point loop (Alg. 1): {t_loop:8.3f} s")
    print(f"  speed-up (loop / batched): {t_loop / t_batched:.1f}x   max |difference| of log l: {diff:.2e}")

    everything = data.digits()
    t_rank = best_of(lambda: volume_growth(score, everything, sde, n_axes=1, n_steps=1, t_start=1e-3, t_end=2e-3,
                                           generator=torch.Generator().manual_seed(0)), 1)
    print(f"ranking all {len(everything)} digits with N = 1 and one step (t = 1e-3 -> 2e-3): {t_rank:.3f} s "
          f"({1e3 * t_rank / len(everything):.3f} ms per image)")


if __name__ == "__main__":
    main()
