"""Top layer: the command line; parse, validate, call one library function, print.

    daskdiff run JOB.yaml [--scheduler ADDRESS | --scheduler-file FILE] [--workers N]
                 [--output DIR] [--weights W] [--overwrite] [--no-progress] [--dry-run] [--force]
    daskdiff init [FOLDER ...] [-o JOB.yaml] [--model M] [--weights W]
    daskdiff info RESULTS.nc|OUTPUT_DIR
    daskdiff plot RESULTS.nc|OUTPUT_DIR|COMPARE.csv -o FIGURE.png|.pdf|.svg
    daskdiff compare RESULTS.nc|OUTPUT_DIR NEURAL.csv|.parquet [--value COLUMN] [--by area,layer]
                 [--stimulus COLUMN] [--session COLUMN] [--map MAP.yaml] [--measure auto|images|spectral]
                 [--unmatched error|warn] [-o compare.csv]
    daskdiff images noise|photos|augment|frames OUT_DIR ...
    daskdiff images gratings|photo_movie|skimage_gif|scrambled|movie ... OUT_DIR [--PARAMETER VALUE ...]
    daskdiff images select SRC OUT_DIR --class CLASS [--min-prob P] [--model M --weights W]
    daskdiff images adversarial SRC OUT_DIR [--eps 8 --step 1 --iters 10]
                 [--avoid 281-285 | --target CLASS] [--model M --weights W]
    daskdiff --version
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import inspect
import os
import re
import select
import signal
import sys
import threading
import traceback
import types
import typing
from pathlib import Path

from . import __version__
from .errors import DaskdiffError, InputError, shorten


def _run(args: argparse.Namespace) -> int:
    from .pipeline.spec_file import load_spec

    spec, base = load_spec(args.job)  # the model is built (importing its backend quietly) only where its facts are not cached
    where = {"output": args.output, "weights": args.weights, "overwrite": args.overwrite, "scheduler": args.scheduler,
             "scheduler_file": args.scheduler_file, "n_workers": args.workers, "force": args.force}
    if args.dry_run:
        from .pipeline.job import dry_run

        dry_run(spec, base, **where)
        return 0
    from .pipeline.job import run_job

    result = run_job(spec, base, **where, progress=not args.no_progress, command=" ".join(["daskdiff", *sys.argv[1:]]))
    from .io.layout import PLOT_FILE
    from .io.store import local_copy
    from .plot import plot_results

    with local_copy(result.path) as results:  # on an object store: downloaded, the figure uploaded
        print(f"figure: {plot_results(results, result.path.parent / PLOT_FILE)}")
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary())
    return 0


def _init(args: argparse.Namespace) -> int:
    from .pipeline.template import write_spec_template

    path = write_spec_template(args.output, args.folders, model=args.model, weights=args.weights)
    sets = f"{len(args.folders)} image set(s)" if args.folders else "an example image set to replace"
    print(f"wrote {path} ({sets}); edit it, then: daskdiff run {path} --dry-run")
    return 0


def _results_file(path: str) -> Path:
    """A results file given as itself or as the output folder that holds it."""
    from .io.layout import RESULTS_FILE

    given = Path(path)
    if not given.is_dir():
        return given
    if not (given / RESULTS_FILE).is_file():
        raise InputError(f"folder {shorten(str(given))} holds no {RESULTS_FILE}; give the output folder of a finished job or its {RESULTS_FILE}")
    return given / RESULTS_FILE


def _info(args: argparse.Namespace) -> int:
    from .info import describe_results

    print(describe_results(_results_file(args.results)))
    return 0


FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
"""File-name extension -> the format ``daskdiff plot -o`` writes (matplotlib's ``savefig(format=...)``)."""


def figure_format(path: str | os.PathLike) -> str:
    """The figure format of a file name, from its extension (any case); InputError for another."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise InputError(f"cannot tell the figure format of {shorten(str(path))} from its extension; name a "
                         f"{', '.join(FIGURE_FORMATS)} file, e.g. -o differentiation.pdf")
    return FIGURE_FORMATS[suffix]


def _plot(args: argparse.Namespace) -> int:
    from .io.atomic import atomic_write
    from .plot import plot_results

    form = figure_format(args.output)
    if Path(args.results).suffix.lower() == ".csv":  # a table that 'daskdiff compare' wrote
        from .comparison import read_comparison
        from .plot import plot_comparison

        figure = plot_comparison(read_comparison(args.results))
    else:
        figure = plot_results(_results_file(args.results))
    print(atomic_write(args.output, lambda tmp: figure.savefig(tmp, dpi=120, format=form, bbox_inches="tight")))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .comparison import compare, write_comparison

    ds = compare(_results_file(args.results), args.neural, value=args.value, by=[c.strip() for c in args.by.split(",") if c.strip()],
                 stimulus=args.stimulus, session=args.session, mapping=args.map, measure=args.measure, unmatched=args.unmatched,
                 n_permutations=args.permutations, n_bootstrap=args.bootstrap, seed=args.seed, confidence=args.confidence)
    print(f"compared {ds.sizes['stimulus']} stimuli ({', '.join(ds.attrs['matched'])}) using {ds.attrs['network_variable']}, "
          f"{ds.sizes['group']} neural group(s); wrote {write_comparison(ds, args.output)}")
    return 0


def _compare_command(sub: argparse._SubParsersAction) -> None:
    """``daskdiff compare``: network versus neural recordings (:func:`daskdiff.comparison.compare`)."""
    from .comparison import DEFAULT_VALUE, MEASURES

    parser = _command(sub, "compare", "Spearman correlation across stimuli between each network layer and each neural group "
                                      "of a table of recordings (permutation p, bootstrap CI over sessions, Holm across layers)")
    parser.add_argument("results", help="a results file (differentiation.nc) or the output folder holding it")
    parser.add_argument("neural", help="the neural table, .csv or .parquet: one row per session x stimulus x trial")
    parser.add_argument("--value", default=DEFAULT_VALUE, help="the table's column to compare with")
    parser.add_argument("--by", default="area,layer", help="the table's columns that define a neural group, comma-separated")
    parser.add_argument("--stimulus", default="stimulus", help="the table's column naming the stimulus")
    parser.add_argument("--session", default="session", help="the table's column naming the recording session")
    parser.add_argument("--map", help="YAML file of 'results set: table stimulus' lines, for names that differ")
    parser.add_argument("--measure", choices=sorted(MEASURES), default="auto",
                        help="the network's value: auto takes the spectral measure when every matched set is a movie")
    parser.add_argument("--unmatched", choices=["error", "warn"], default="error",
                        help="a stimulus in one source only: stop, or list it and compare the matched ones")
    parser.add_argument("--permutations", type=_positive_int, default=9999, help="Monte Carlo permutations when n! is too many to enumerate")
    parser.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples of each group's sessions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations and resamples")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap interval")
    parser.add_argument("-o", "--output", default="compare.csv", help="the CSV table to write")
    parser.set_defaults(func=_compare)


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
    parser.add_argument("out_dir", help="folder to write the images to")
    parser.add_argument("--model", default="VGG16", help="keras.applications name or a .keras file")
    parser.add_argument("--weights", help="'imagenet' (default for applications), 'random', 'file' or a weights file")
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    parser.add_argument("--preprocess", choices=["caffe", "tf", "torch", "none"], help="override the model's preprocessing")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler whose workers see the files (default: work here)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, where it has one (not None, not a flag's False)
    and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with ``text`` and gives the defaults of its options."""
    return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)


def _plain(text: str) -> str:
    """Docstring text without its reST markup (roles, double back-quotes), on one line."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(text.split()))
    return text.replace("``", "")


def _first_line(text: str | None) -> str:
    return _plain((text or "").strip().split("\n\n")[0])


def _parameter_help(function: typing.Callable, name: str) -> str:
    """The first sentence of ``name``'s entry in ``function``'s numpydoc Parameters, or ''."""
    lines = (inspect.getdoc(function) or "").splitlines()
    for i, line in enumerate(lines):
        if " : " in line and not line.startswith(" ") and name in [n.strip() for n in line.split(" : ")[0].split(",")]:
            entry = []
            for following in lines[i + 1:]:
                if not following.startswith(" "):
                    break
                entry.append(following)
            first = _plain(" ".join(entry)).split(". ")[0]
            return first if first.endswith(".") else f"{first}."
    return ""


def _option_type(hint: typing.Any) -> dict[str, typing.Any]:
    """argparse keywords (type, choices, nargs) for a generator parameter's annotation."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [h for h in typing.get_args(hint) if h is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else str  # a path or a mapping: a path on the command line
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return {"type": (typing.get_args(hint) or (str,))[0], "nargs": "+"}
    return {"type": str}


def _generator_command(kinds: argparse._SubParsersAction, kind: str) -> None:
    """``daskdiff images KIND``, its arguments read from the generator's signature and docstring:
    required parameters before ``out_dir``, the others as ``--name VALUE`` (the generator's
    default when not given). ``kind`` is a key of :data:`daskdiff.stimuli.registry.GENERATORS`."""
    from .stimuli.registry import GENERATORS

    function = GENERATORS[kind].function
    parser = _command(kinds, kind, _first_line(function.__doc__))
    hints = typing.get_type_hints(function, include_extras=True)
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name != "out_dir"]
    for p in parameters:
        if p.default is inspect.Parameter.empty:
            parser.add_argument(p.name, help=_parameter_help(function, p.name), **{k: v for k, v in _option_type(hints.get(p.name)).items() if k != "nargs"})
    parser.add_argument("out_dir", help="folder to write the images to")
    for p in parameters:
        if p.default is not inspect.Parameter.empty:
            default = "" if p.default is None else f" (default: {p.default})"
            parser.add_argument(f"--{p.name.replace('_', '-')}", dest=p.name, help=_parameter_help(function, p.name) + default,
                                **_option_type(hints.get(p.name)))


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
    parser.add_argument("--version", action="version", version=f"daskdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _command(sub, "run", "run a job spec (YAML) on a Dask cluster (a LocalCluster by default)")
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

    init = _command(sub, "init", "write a commented job spec for your image folders (one image set per folder), to edit and run")
    init.add_argument("folders", nargs="*", metavar="FOLDER", help="folders of images, one image set each, named after the folder")
    init.add_argument("-o", "--output", default="job.yaml", help="the spec file to write (never overwritten)")
    init.add_argument("--model", help="model.name: a keras.applications name or a .keras file (default: the spec's)")
    init.add_argument("--weights", help="model.weights: 'imagenet', 'random', 'file' (a .keras file's own) or a weights file (default: the spec's)")
    init.set_defaults(func=_init)

    info = _command(sub, "info", "what a results file holds: sets, layers, n_units, repeats, skipped images, provenance")
    info.add_argument("results", help="a results file (differentiation.nc) or the output folder holding it")
    info.set_defaults(func=_info)

    plot = _command(sub, "plot", "differentiation by layer, one line per image set (or, from a compare.csv, rho per layer and neural group)")
    plot.add_argument("results", help="a results file (differentiation.nc), the output folder holding it, or a table 'daskdiff compare' wrote")
    plot.add_argument("-o", "--output", required=True, help=f"figure file to write; its extension gives the format: {', '.join(FIGURE_FORMATS)}")
    plot.set_defaults(func=_plot)

    _compare_command(sub)

    images = _command(sub, "images", "generate an image set (or a movie) into a folder")
    kinds = images.add_subparsers(dest="generator", required=True)
    noise = _command(kinds, "noise", "lossless white-noise PNGs")
    noise.add_argument("out_dir", help="folder to write the images to")
    noise.add_argument("--count", type=int, default=43, help="how many images")
    noise.add_argument("--size", type=int, default=224, help="pixels per side")
    noise.add_argument("--seed", type=int, default=0, help="seed of the draws (image i is the same whatever --count)")
    noise.add_argument("--kind", choices=["uniform", "gaussian"], default="uniform", help="distribution of the grey levels")
    photos = _command(kinds, "photos", "natural photographs bundled with scikit-image")
    photos.add_argument("out_dir", help="folder to write the images to")
    photos.add_argument("--count", type=int, help="how many photographs (default: all of them)")
    photos.add_argument("--size", type=int, help="crop and resize to a square of this many pixels per side (default: as they are)")
    augment = _command(kinds, "augment", "random crops/flips of one image (a low-diversity set)")
    augment.add_argument("source", help="image file, or a bundled photo name such as 'chelsea'")
    augment.add_argument("out_dir", help="folder to write the images to")
    augment.add_argument("--count", type=int, default=8, help="how many images")
    augment.add_argument("--size", type=int, default=224, help="pixels per side")
    augment.add_argument("--seed", type=int, default=0, help="seed of the crops and flips")
    frames = _command(kinds, "frames", "frames of a movie as PNGs")
    frames.add_argument("movie", help="a movie file (GIF, MP4, ...)")
    frames.add_argument("out_dir", help="folder to write the frames to")
    step = frames.add_mutually_exclusive_group(required=True)
    step.add_argument("--every", type=int, help="keep every N-th frame")
    step.add_argument("--fps", type=float, help="keep frames at this rate (Hz)")
    images.set_defaults(func=_images)
    select = _command(kinds, "select", "copy the images a model puts in a class (and write selection.csv)")
    _model_options(select)
    select.add_argument("--class", dest="classes", required=True, help="class name, index or range, e.g. tabby, 281 or 281-285")
    select.add_argument("--min-prob", type=float, default=0.5, help="keep images with p(class) >= this")
    select.set_defaults(func=_select)
    adversarial = _command(kinds, "adversarial", "PGD adversarial PNGs, checked after saving (and adversarial.csv)")
    _model_options(adversarial)
    adversarial.add_argument("--eps", type=int, default=8, help="L-inf radius in grey levels")
    adversarial.add_argument("--step", type=float, default=1.0, help="grey levels per iteration")
    adversarial.add_argument("--iters", type=int, default=10, help="iterations")
    goal = adversarial.add_mutually_exclusive_group()
    goal.add_argument("--avoid", help="untargeted: classes to leave (default 281-285, the ImageNet cats)")
    goal.add_argument("--target", help="targeted: class to reach, by name or index")
    adversarial.add_argument("--drop-failures", action="store_true", help="delete the PNGs of failed attacks (default: keep them, marked in the table)")
    adversarial.set_defaults(func=_adversarial)
    from .stimuli.registry import GENERATORS

    for kind in GENERATORS:  # the movie generators, and any other kind without a command of its own above
        if kind not in kinds.choices:
            _generator_command(kinds, kind)
    return parser


KEPT = "re-run the same command to resume (what was written so far is kept)"
"""The end of the line Ctrl-C and SIGTERM print: every file appears whole or not at all, and a re-run reuses them."""


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
            code = args.func(args)
            sys.stdout.flush()  # here, so that a reader gone (| head) is seen below, not at exit
            return code
    except BrokenPipeError as err:
        if not _stdout_gone():
            _report_bug(args.command, err)
            return 1
        _stdout_to_devnull()
        return 128 + signal.SIGPIPE  # as a shell reports a command that SIGPIPE ended
    except DaskdiffError as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, DaskdiffError):
            _report_bug(args.command, cause)  # e.g. a task failed on a worker: show where
        print(f"daskdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        return _stopped(f"daskdiff {args.command}: terminated (SIGTERM); {KEPT}", 143, at_once=argv is None)
    except KeyboardInterrupt:
        return _stopped(f"daskdiff {args.command}: interrupted; {KEPT}", 130, at_once=argv is None)
    except Exception as err:  # a bug in daskdiff, not in the user's input
        _report_bug(args.command, err)
        return 1


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (``daskdiff info OUT | head``):
    ``poll`` reports an error on its write end."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor
        return False


def _stdout_to_devnull() -> None:
    """Send what is left of standard output to ``os.devnull``, so that the interpreter's last
    flush at exit does not raise again (Python's documented way of ending quietly on SIGPIPE;
    ``SIGPIPE``'s default action would also end a run whose scheduler connection breaks)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stopped(line: str, code: int, *, at_once: bool) -> int:
    """Print ``line`` (why the command stopped) and return ``code``, or, ``at_once`` (the command
    run as a program), exit with it at once: the clusters are closed and the files written by
    then, and the interpreter's own teardown of TensorFlow would keep the terminal waiting for
    seconds more after Ctrl-C."""
    print(line, file=sys.stderr)
    if at_once:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code


def _report_bug(command: str, err: BaseException) -> None:
    traceback.print_exception(err, file=sys.stderr)
    print(
        f"daskdiff {command}: internal error {type(err).__name__} (a bug in daskdiff, not in your input); "
        "please report it with the traceback above",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
