"""Benchmark: top-1 retrieval (mempkg.retrieval.top1) against one plain matrix product.

Prints, in one run on this machine, for random features shaped like the copy detector's
(``n_chunks = 16`` chunks of 32) of ``--n-query`` queries against ``--n-train`` training images:

* the unit: one plain matrix product of the normalised flattened features followed by ``max``
  (the whole similarity matrix at once, what ``torch.cdist`` or ``a @ b.T`` costs);
* ``top1(..., "cosine")`` and ``top1(..., "split_product")`` in that unit. The limit for cosine
  is 1.0 (the same product, in row blocks); split-product does one product per chunk, each
  ``n_chunks`` times smaller, plus an elementwise max per chunk, so its limit is about 1.0 plus the
  cost of ``n_chunks`` maxima over the ``(n, m)`` matrix;
* ``torch.cdist`` (Euclidean, matrix-product mode) for reference.

Timings vary by about +-30 % on a shared machine; the ratios are measured within one run (best of
``--repeats``), never asserted.

    .venv/bin/python benchmarks/retrieval.py [--n-query 5000] [--n-train 1797] [--threads 1]
"""
import argparse

import torch
import torch.nn.functional as F

from mempkg.retrieval import top1

from _timing import best_of  # benchmarks/_timing.py, beside this script


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-query", type=int, default=5000)
    parser.add_argument("--n-train", type=int, default=1797)
    parser.add_argument("--n-chunks", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(args.n_query, args.n_chunks, args.dim, generator=g)
    t = torch.randn(args.n_train, args.n_chunks, args.dim, generator=g)

    def plain():
        a, b = F.normalize(q.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
        return (a @ b.T).max(1)

    unit = best_of(plain, args.repeats)
    rows = {
        "top1, cosine": best_of(lambda: top1(q, t, "cosine"), args.repeats),
        f"top1, split_product ({args.n_chunks} chunks)": best_of(lambda: top1(q, t, "split_product"), args.repeats),
        "torch.cdist + min": best_of(lambda: torch.cdist(q.flatten(1), t.flatten(1)).min(1), args.repeats),
    }
    print(f"{args.n_query} queries x {args.n_train} training rows, features {args.n_chunks} x {args.dim}, "
          f"{args.threads} thread(s)")
    print(f"  plain matmul + max (unit)     : {1e3 * unit:9.2f} ms")
    for name, seconds in rows.items():
        print(f"  {name:30s}: {1e3 * seconds:9.2f} ms, ratio {seconds / unit:6.2f} x plain matmul")


if __name__ == "__main__":
    main()
