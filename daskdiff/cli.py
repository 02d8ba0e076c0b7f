"""Top layer: the command line; parse, validate, call one library function, print.

    daskdiff run JOB.yaml [--scheduler ADDRESS | --scheduler-file FILE] [--workers N]
                 [--output DIR] [--weights W] [--overwrite] [--no-progress] [--dry-run] [--force]
    daskdiff info RESULTS.nc
    daskdiff plot RESULTS.nc -o FIGURE.png
    daskdiff images noise|photos|augment|frames OUT_DIR ...
    daskdiff images select SRC OUT_DIR --class CLASS [--min-prob P] [--model M --weights W]
    daskdiff images adversarial SRC OUT_DIR [--eps 8 --step 1 --iters 10]
                 [--avoid 281-285 | --target CLASS] [--model M --weights W]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback

from .errors import DaskdiffError


def _run(args: argparse.Namespace) -> int:
    from .model.quiet import import_tensorflow_quietly
    from .pipeline.spec import load_spec

    spec, base = load_spec(args.job)
    import_tensorflow_quietly()  # here, not at the model's first use, so that its start-up lines can be filtered
    where = {"output": args.output, "weights": args.weights, "overwrite": args.overwrite, "scheduler": args.scheduler,
             "scheduler_file": args.scheduler_file, "n_workers": args.workers, "force": args.force}
    if args.dry_run:
        from .pipeline.job import dry_run

        dry_run(spec, base, **where)
        return 0
    from .pipeline.job import run_job

    result = run_job(spec, base, **where, progress=not args.no_progress, command=" ".join(["daskdiff", *sys.argv[1:]]))
    from .io.layout import PLOT_FILE
    from .plot import plot_results

    print(f"figure: {plot_results(result.path, result.path.parent / PLOT_FILE)}")
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
    from .stimuli.registry import generate

    params = {k: v for k, v in vars(args).items() if k not in ("command", "generator", "out_dir", "func") and v is not None}
    paths = generate(args.generator, args.out_dir, **params)
    print(f"wrote {len(paths)} image(s) to {args.out_dir}")
    return 0


def _client(address: str | None):
    """A ``distributed.Client`` of a running scheduler, or (no address) a context giving None."""
    if address is None:
        return contextlib.nullcontext()
    from .pipeline.cluster import open_client

    return open_client(address, "--scheduler")


def _select(args: argparse.Namespace) -> int:
    from .model.quiet import import_tensorflow_quietly
    from .stimuli.select import model_spec, select_images

    import_tensorflow_quietly()

    spec = model_spec(args.model, args.weights, args.seed, args.preprocess)
    with _client(args.scheduler) as client:
        selection = select_images(args.source, args.out_dir, spec, classes=args.classes, min_prob=args.min_prob,
                                  batch_size=args.batch_size, client=client)
    print(selection.summary())
    return 0


def _adversarial(args: argparse.Namespace) -> int:
    from .model.quiet import import_tensorflow_quietly
    from .stimuli.adversarial import attack_images
    from .stimuli.select import model_spec

    import_tensorflow_quietly()

    spec = model_spec(args.model, args.weights, args.seed, args.preprocess)
    with _client(args.scheduler) as client:
        report = attack_images(
            args.source, args.out_dir, spec, eps=args.eps, step=args.step, iters=args.iters, avoid=args.avoid,
            target=args.target, keep_failures=not args.drop_failures, batch_size=args.batch_size, client=client,
        )
    print(report.details())
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="image set: folder, glob pattern (quoted) or list file")
    parser.add_argument("out_dir")
    parser.add_argument("--model", default="VGG16", help="keras.applications name or a .keras file (default VGG16)")
    parser.add_argument("--weights", help="'imagenet' (default for applications), 'random', 'file' or a weights file")
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    parser.add_argument("--preprocess", choices=["caffe", "tf", "torch", "none"], help="override the model's preprocessing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scheduler", help="address of a running Dask scheduler whose workers see the files (default: work here)")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse prints the message as one line)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, e.g. --workers 2; got {text[:200]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskdiff", description="Differentiation of neural network representations on a Dask cluster.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job spec (YAML) on a Dask cluster (a LocalCluster by default)")
    run.add_argument("job", help="job spec YAML file, e.g. jobs/demo.yaml")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a new LocalCluster)")
    where.add_argument("--scheduler-file", help="scheduler file written by 'dask scheduler --scheduler-file'")
    run.add_argument("--workers", type=_positive_int, help="number of LocalCluster worker processes (one thread each)")
    run.add_argument("--output", help="output folder (overrides the spec's output:)")
    run.add_argument("--weights", help="'imagenet', 'random' or a weights file (overrides model.weights)")
    run.add_argument("--overwrite", action="store_true", help="replace results in an output folder written by a different spec")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the plan and the estimate of its work (tasks, bytes, memory, time); run and write nothing")
    run.add_argument("--force", action="store_true", help="run even if the estimate exceeds a bound (tasks, memory, disk, CPU time)")
    run.set_defaults(func=_run)

    info = sub.add_parser("info", help="what a results file holds")
    info.add_argument("results")
    info.set_defaults(func=_info)

    plot = sub.add_parser("plot", help="differentiation by layer, one line per image set")
    plot.add_argument("results")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.set_defaults(func=_plot)

    images = sub.add_parser("images", help="generate an image set")
    kinds = images.add_subparsers(dest="generator", required=True)
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
    select = kinds.add_parser("select", help="copy the images a model puts in a class (and write selection.csv)")
    _model_options(select)
    select.add_argument("--class", dest="classes", required=True, help="class name, index or range, e.g. tabby, 281 or 281-285")
    select.add_argument("--min-prob", type=float, default=0.5, help="keep images with p(class) >= this (default 0.5)")
    select.set_defaults(func=_select)
    adversarial = kinds.add_parser("adversarial", help="PGD adversarial PNGs, checked after saving (and adversarial.csv)")
    _model_options(adversarial)
    adversarial.add_argument("--eps", type=int, default=8, help="L-inf radius in grey levels (default 8)")
    adversarial.add_argument("--step", type=float, default=1.0, help="grey levels per iteration (default 1)")
    adversarial.add_argument("--iters", type=int, default=10, help="iterations (default 10)")
    goal = adversarial.add_mutually_exclusive_group()
    goal.add_argument("--avoid", help="untargeted: classes to leave (default 281-285, the ImageNet cats)")
    goal.add_argument("--target", help="targeted: class to reach, by name or index")
    adversarial.add_argument("--drop-failures", action="store_true", help="delete the PNGs of failed attacks (default: keep them, marked in the table)")
    adversarial.set_defaults(func=_adversarial)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM sends at a time limit), raised in the main thread like Ctrl-C so that
    clusters and files are closed the same way."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _configure_logging() -> None:
    """Progress lines on stdout (:func:`daskdiff.logs.log_to_terminal`), unless Dask's logging
    config names a daskdiff logger: then importing distributed applies that config instead."""
    import dask.config

    from .logs import log_to_terminal, named_in_dask_config

    if named_in_dask_config(dask.config.get("logging", default={}) or {}):
        import distributed  # noqa: F401  (distributed.config.initialize_logging, run at its import)
    else:
        log_to_terminal()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except DaskdiffError as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, DaskdiffError):
            _report_bug(args.command, cause)  # e.g. a task failed on a worker: show where
        print(f"daskdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM); re-run the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in daskdiff, not in the user's input
        _report_bug(args.command, err)
        return 1


def _report_bug(command: str, err: BaseException) -> None:
    traceback.print_exception(err, file=sys.stderr)
    print(
        f"daskdiff {command}: internal error {type(err).__name__} (a bug in daskdiff, not in your input); "
        "please report it with the traceback above",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
