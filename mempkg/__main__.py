"""Command line: ``python -m mempkg {list,execute,run,sweep,train,audit}``.

``list``, ``execute`` and ``run`` drive the chapters (:mod:`mempkg.run`); ``sweep`` runs a grid of
parameters on Dask distributed (:mod:`mempkg.sweep`); ``train NAME`` trains
the model of a recipe and commits it to ``data/`` with its sha256 (:mod:`mempkg.checkpoints`);
``audit`` scores every training image of a model by every measure (:mod:`mempkg.audit`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mempkg", description="Execute the chapters of 'Memorization in Diffusion Models'.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the chapters")
    ex = sub.add_parser("execute", help="re-execute chapters at their defaults into book/chapters/")
    ex.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    rn = sub.add_parser("run", help="run one chapter with new parameters into runs/<chapter>/<parameters>/")
    rn.add_argument("chapter", help="chapter number or name, e.g. 2 or 02_exact_scores")
    rn.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter and its value (a Python literal or a string); repeatable")
    rn.add_argument("--root", default="runs", help="folder that holds the run folders (default: runs)")
    rn.add_argument("--notebooks", default=str(run.NOTEBOOKS), help=argparse.SUPPRESS)
    sw = sub.add_parser("sweep", help="run a chapter over a grid of parameters on Dask into runs/<chapter>/ and sweep.parquet")
    sw.add_argument("chapter", help="chapter number or name, e.g. 2 or 02_exact_scores")
    sw.add_argument("-g", "--grid", nargs=2, action="append", default=[], metavar=("NAME", "V1,V2,..."), help="a swept parameter and its comma-separated values; repeatable (the grid is their product)")
    sw.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter fixed for every run; repeatable")
    sw.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: a LocalCluster on this machine)")
    sw.add_argument("--workers", type=int, default=None, help="workers of the LocalCluster (default: one per core, at most one per run)")
    sw.add_argument("--root", default="runs", help="folder that holds the run folders (default: runs)")
    sw.add_argument("--notebooks", default=str(run.NOTEBOOKS), help=argparse.SUPPRESS)
    tr = sub.add_parser("train", help="train a recipe's model into data/NAME.pt and record it in data/manifest.json")
    tr.add_argument("name", help="recipe name (see mempkg.checkpoints.RECIPES)")
    tr.add_argument("--out", default=None, help="folder for NAME.pt and its manifest.json (default: the committed data/)")
    tr.add_argument("--data-root", default=None, help="the local CIFAR-10 copy, for a cifar10_* recipe")
    tr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                    help="replace a recipe setting: n_steps=1000, net.base=64, data.n=500; repeatable (needs --out)")
    tr.add_argument("--cost", action="store_true", help="print the training's FLOP count and estimated A100 hours; train nothing")
    au = sub.add_parser("audit", help="score every training image of a model by every measure; CSV, Parquet, HTML")
    au.add_argument("--model", required=True, help="a recipe name, a TorchScript noise network, or a diffusers folder")
    au.add_argument("--train", required=True, help="a .npy/.pt tensor, an image folder, or cifar10:<root>")
    au.add_argument("--out", required=True, help="the folder for measures.csv/.parquet, cost.csv and report.html")
    au.add_argument("--measures", default=None, help="comma-separated names from mempkg.audit.MEASURES (default: all)")
    au.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    au.add_argument("--n-generate", type=int, default=2000, help="the shared pool of generations (default 2000)")
    au.add_argument("--chunk-size", type=int, default=256, help="training images per resumable chunk")
    au.add_argument("--seed", type=int, default=0, help="seeds the pool of generations and each chunk's probes")
    args = parser.parse_args(argv)

    if args.command == "audit":
        from . import audit

        measures = audit.DEFAULT_MEASURES if args.measures is None else [m.strip() for m in args.measures.split(",") if m.strip()]
        try:
            written = audit.run_audit(args.model, args.train, args.out, measures, device=args.device,
                                      n_generate=args.n_generate, chunk_size=args.chunk_size, seed=args.seed)
        except ValueError as exc:  # bad input, found before any work
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: finished chunks are kept in {args.out}/.chunks; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        for name, path in written.items():
            print(path)
        return 0

    if args.command == "list":
        for path in run.chapters():
            print(path.stem)
        return 0
    if args.command == "execute":
        sources = [run.find_chapter(c) for c in args.chapters] if args.chapters else run.chapters()
        for source in sources:
            output = run.EXECUTED / f"{source.stem}.ipynb"
            print(f"executing {source.name} -> {output.relative_to(run.ROOT)}", flush=True)
            nb = run.execute_chapter(source, output)
            print(f"  {nb.metadata.papermill.duration:.1f} s", flush=True)
        return 0
    if args.command == "train":
        from . import checkpoints

        try:
            settings = dict(checkpoints.parse_setting(text) for text in args.settings)
            recipe = checkpoints.with_settings(checkpoints.RECIPES[args.name] if args.name in checkpoints.RECIPES
                                               else checkpoints.recipe_of(args.name), settings)
            if args.cost:
                cost = checkpoints.training_cost(args.name, settings)
                print(f"{args.name}: {cost['parameters']:,} parameters, {cost['forward_flops'] / 1e9:.2f} GFLOP per "
                      f"example forward, {cost['total_flops'] / 1e15:,.1f} PFLOP in all; about "
                      f"{checkpoints.gpu_hours(cost['total_flops']):.1f} h on one A100 at "
                      f"{checkpoints.UTILISATION:.0%} of {checkpoints.A100_TF32_FLOPS / 1e12:.0f} TFLOP/s (an estimate)")
                return 0
            if settings and args.out is None:
                raise ValueError("--set changes the recipe: give --out, a folder other than the committed data/")
            if str(recipe.data.name if hasattr(recipe, "data") else "").startswith("cifar10") and args.data_root is None:
                raise ValueError(f"{args.name} trains on CIFAR-10: give --data-root, the folder of your local copy")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out = checkpoints.DATA_DIR if args.out is None else args.out
        path = checkpoints.train_recipe(args.name, out_dir=out, data_root=args.data_root, device=args.device,
                                        settings=settings)
        entry = checkpoints.read_manifest(Path(out) / "manifest.json")[args.name]
        print(f"{path}: sha256 {entry['sha256']}, {entry['training_seconds']} s")
        return 0
    parameters = {name: run.parse_value(value) for name, value in args.parameter}
    if args.command == "sweep":
        from . import sweep

        try:
            grid = sweep.parse_grid(args.grid)
            result = sweep.run_sweep(args.chapter, grid, parameters, root=args.root, scheduler=args.scheduler,
                                     workers=args.workers, notebooks=args.notebooks)
        except (run.ParameterError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(result['ran'])} ran, {len(result['skipped'])} already complete (skipped), {len(result['failed'])} failed")
        print(f"table: {result['path']} (and .csv)")
        for folder, error in result["failed"]:
            print(f"FAILED {folder}: {error}")
        return 1 if result["failed"] else 0
    try:
        output = run.run_chapter(args.chapter, parameters, root=args.root, notebooks=args.notebooks)
    except ValueError as exc:  # an unknown chapter or parameter, a value of the wrong type
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except run.RunFailed as exc:
        print(f"FAILED {exc.folder}: {exc.error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
