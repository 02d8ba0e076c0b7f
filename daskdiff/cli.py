"""Command line: parse, validate, call one library function, print.

    daskdiff run JOB.yaml [--scheduler ADDRESS | --scheduler-file FILE] [--workers N]
                 [--output DIR] [--weights W] [--overwrite] [--no-progress]
    daskdiff info RESULTS.nc
    daskdiff plot RESULTS.nc -o FIGURE.png
    daskdiff images noise|photos|augment|frames OUT_DIR ...
"""

from __future__ import annotations

import argparse
import os
import sys


def _run(args: argparse.Namespace) -> int:
    from .job import run_job
    from .spec import load_spec

    spec, base = load_spec(args.job)
    result = run_job(
        spec, base, output=args.output, weights=args.weights, overwrite=args.overwrite,
        scheduler=args.scheduler, scheduler_file=args.scheduler_file, n_workers=args.workers,
        progress=not args.no_progress, command=" ".join(["daskdiff", *sys.argv[1:]]),
    )
    if result.plot:
        print(f"figure: {result.plot}")
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary())
    return 0


def _info(args: argparse.Namespace) -> int:
    from .info import describe_results

    print(describe_results(args.results))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_results

    print(plot_results(args.results, args.output))
    return 0


def _images(args: argparse.Namespace) -> int:
    from .generate import generate

    params = {k: v for k, v in vars(args).items() if k not in ("command", "kind", "out_dir", "func") and v is not None}
    paths = generate(args.kind, args.out_dir, **params)
    print(f"wrote {len(paths)} image(s) to {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskdiff", description="Differentiation of neural network representations on a Dask cluster.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job spec (YAML) on a Dask cluster (a LocalCluster by default)")
    run.add_argument("job", help="job spec YAML file, e.g. jobs/demo.yaml")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a new LocalCluster)")
    where.add_argument("--scheduler-file", help="scheduler file written by 'dask scheduler --scheduler-file'")
    run.add_argument("--workers", type=int, help="number of LocalCluster worker processes (one thread each)")
    run.add_argument("--output", help="output folder (overrides the spec's output:)")
    run.add_argument("--weights", help="'imagenet', 'random' or a weights file (overrides model.weights)")
    run.add_argument("--overwrite", action="store_true", help="replace results in an output folder written by a different spec")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    info = sub.add_parser("info", help="what a results file holds")
    info.add_argument("results")
    info.set_defaults(func=_info)

    plot = sub.add_parser("plot", help="differentiation by layer, one line per image set")
    plot.add_argument("results")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.set_defaults(func=_plot)

    images = sub.add_parser("images", help="generate an image set")
    kinds = images.add_subparsers(dest="kind", required=True)
    noise = kinds.add_parser("noise", help="lossless white-noise PNGs")
    noise.add_argument("out_dir")
    noise.add_argument("--count", type=int, default=43)
    noise.add_argument("--size", type=int, default=224)
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--kind", choices=["uniform", "gaussian"], default="uniform")
    photos = kinds.add_parser("photos", help="natural photographs bundled with scikit-image")
    photos.add_argument("out_dir")
    photos.add_argument("--count", type=int)
    photos.add_argument("--size", type=int)
    augment = kinds.add_parser("augment", help="random crops/flips of one image (a low-diversity set)")
    augment.add_argument("source", help="image file, or a bundled photo name such as 'chelsea'")
    augment.add_argument("out_dir")
    augment.add_argument("--count", type=int, default=8)
    augment.add_argument("--size", type=int, default=224)
    augment.add_argument("--seed", type=int, default=0)
    frames = kinds.add_parser("frames", help="frames of a movie as PNGs")
    frames.add_argument("movie")
    frames.add_argument("out_dir")
    step = frames.add_mutually_exclusive_group(required=True)
    step.add_argument("--every", type=int)
    step.add_argument("--fps", type=float)
    images.set_defaults(func=_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import user_errors

    try:
        return args.func(args)
    except user_errors() as err:
        print(f"daskdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
