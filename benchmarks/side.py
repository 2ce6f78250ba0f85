"""Benchmark: the cost of classifier-guided sampling (SIDE, seed 002 Eq. 12) against unguided sampling.

Prints, in one run on this machine, for chapter 7's target model and TDKD student on one batch:

* unguided sampling (the probability-flow ODE, Heun) and guided sampling on the same batch and
  steps, and their ratio;
* the limit of guided sampling: the unguided cost plus one forward and one backward pass of the
  classifier per score evaluation (what Eq. 12 adds), measured by running exactly those calls;
  the ratio of guided sampling to that limit is the overhead of the guidance plumbing (1.0 = none).

Timings vary by about +-30 % on a shared machine; each ratio is measured within one run (best of
``--repeats``), never asserted.

    .venv/bin/python benchmarks/side.py [--batch 300] [--steps 30] [--threads 1]
"""
import argparse

import torch

from mempkg import VPSDE, checkpoints, side
from mempkg.ode import time_grid

from _timing import best_of  # benchmarks/_timing.py, beside this script


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    score = checkpoints.load_model("digits1000_side")
    student = checkpoints.load_classifier("digits1000_side_student")
    labels = side.draw_labels(args.batch, 10)
    shape = (args.batch, *score.data_shape)

    def unguided():
        side.side_sample(score, None, 0, 0.0, args.batch, sde, n_steps=args.steps,
                         generator=torch.Generator().manual_seed(0))

    def guided():
        side.side_sample(score, student, labels, 4.0, args.batch, sde, n_steps=args.steps,
                         generator=torch.Generator().manual_seed(0))

    x = torch.randn(shape)
    taus = time_grid(1.0, 1e-3, args.steps, "log").tolist()

    def classifier_calls():             # Heun: two evaluations per step, one forward + backward each
        for t in taus[:-1]:
            for _ in range(2):
                z = x.clone().requires_grad_(True)
                logp = torch.log_softmax(student(z, torch.full((args.batch,), t)), 1)
                torch.autograd.grad(logp[torch.arange(args.batch), labels].sum(), z)

    t_plain = best_of(unguided, args.repeats)
    t_guided = best_of(guided, args.repeats)
    t_clf = best_of(classifier_calls, args.repeats)
    print(f"SIDE sampling: batch {args.batch}, {args.steps} Heun steps, {args.threads} thread(s)")
    print(f"  unguided sampling             : {t_plain:7.3f} s")
    print(f"  guided sampling (TDKD student): {t_guided:7.3f} s = {t_guided / t_plain:5.2f} x unguided")
    print(f"  limit: unguided + classifier forward+backward per evaluation: {t_plain + t_clf:7.3f} s")
    print(f"  guided / limit: {t_guided / (t_plain + t_clf):5.2f}x (1.0 = no overhead beyond the classifier)")


if __name__ == "__main__":
    main()
