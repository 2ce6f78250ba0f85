"""Benchmark: the cost of the LID estimators relative to one forward and backward pass.

Prints, in one run on this machine, for the committed digit model ``digits1000_x0`` (an MLP score
network on 8x8 digits, d = 64), on one batch of points:

* the time of one forward + backward pass of the network on the batch (the unit: what one
  Hutchinson probe of FLIPD cannot do without);
* FLIPD with 1 and 8 Hutchinson probes and with the exact trace, in that unit (the limit for one
  probe is 1.0: one forward pass, whose output also gives ``|s|^2``, and one backward pass);
* the normal-bundle estimator per point (K = 4d = 256 scores and an SVD), in the unit per point.

Timings vary by about +-30 % on a shared machine; the ratios are measured within one run (best of
``--repeats``), never asserted.

    .venv/bin/python benchmarks/lid.py [--points 128] [--threads 1]
"""
import argparse

import torch

from mempkg import VPSDE, checkpoints, data
from mempkg.lid import flipd, normal_bundle

from _timing import best_of  # benchmarks/_timing.py, beside this script


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=128)
    parser.add_argument("--nb-points", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    recipe = checkpoints.RECIPES["digits1000_x0"]
    score = checkpoints.load_model(recipe.name)
    x = data.training_set(recipe.data, distinct=True)[: args.points]
    g = torch.Generator().manual_seed(0)
    xt = sde.alpha(0.05) * x

    def forward_backward():
        inp = xt.clone().requires_grad_(True)
        out = score(inp, 0.05)
        torch.autograd.grad(out, inp, grad_outputs=torch.ones_like(out))

    unit = best_of(forward_backward, args.repeats)
    rows = {
        "FLIPD, 1 probe": best_of(lambda: flipd(score, x, sde, n_probes=1, generator=g), args.repeats),
        "FLIPD, 8 probes": best_of(lambda: flipd(score, x, sde, n_probes=8, generator=g), args.repeats),
        "FLIPD, exact trace (64 JVPs)": best_of(lambda: flipd(score, x, sde, n_probes=None), 1),
    }
    print(f"{recipe.name} (d = 64), {len(x)} points, {args.threads} thread(s)")
    print(f"  forward + backward pass    : {1e3 * unit:8.3f} ms for the batch (the unit)")
    for name, seconds in rows.items():
        print(f"  {name:27s}: {1e3 * seconds:8.3f} ms = {seconds / unit:6.2f} x forward+backward")
    n = min(args.nb_points, len(x))
    nb = best_of(lambda: normal_bundle(score, x[:n], sde, generator=g), 1) / n
    print(f"  normal bundle (K = 256, SVD): {1e3 * nb:8.3f} ms per point = {nb / (unit / len(x)):6.1f} x "
          "forward+backward per point")


if __name__ == "__main__":
    main()
