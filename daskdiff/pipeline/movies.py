"""Pipeline layer: what a job's movies allow: the spectral options checked against each movie's
frames and frame rate, and one line per movie for the console.

Both take the sets' image counts and frame rates (:class:`~daskdiff.pipeline.resolve.JobInputs`'
``counts`` and ``fps``), not the spec's entries.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..core.spectral import samples_per_window, spectral_windows
from ..errors import InputError
from .spec import JobSpec, SpecError


def check_spectral(spec: JobSpec, counts: dict[str, int], fps: dict[str, float], exact: set[str] | None = None) -> None:
    """Refuse, before any cluster starts, spectral options that a set cannot meet.

    With ``spectral`` in ``analysis.measures`` every set must be a movie (have a frame rate),
    ``analysis.spectral.state_length * fps`` must be a whole number of frames, and each movie
    must hold at least 2 whole windows. ``exact``: the sets whose counts and rates are known
    (before generation, as in a dry run: of the others, a movie whose frame rate is known already
    has that rate checked against ``state_length``); None: all of them.

    Raises
    ------
    SpecError
        Naming the spec key (``analysis.measures`` or ``analysis.spectral.state_length``) and the fix.
    """
    a = spec.analysis
    if "spectral" not in a.measures:
        return
    o = a.spectral
    for name, n in counts.items():
        if exact is not None and name not in exact:
            if name in fps:  # its rate is known, its frames not yet: the window must be whole at that rate
                _whole_window(name, fps, o.state_length)
            continue
        if name not in fps:
            if exact is not None:
                continue  # a generated movie whose rate is known only once it is written
            raise SpecError(
                f"analysis.measures: spectral needs every image set to be a movie, but {name!r} has no frame rate; give "
                f"image_sets.{name}.fps (a folder of frames), use a movie folder (movie.json), a movie file or a movie "
                "generator (gratings, photo_movie, skimage_gif, scrambled), or remove spectral from analysis.measures"
            )
        _whole_window(name, fps, o.state_length)
        try:
            w = spectral_windows(n, fs=fps[name], state_length=o.state_length, overlap=o.overlap)
        except InputError as err:
            raise SpecError(f"analysis.spectral: movie {name!r} at {fps[name]:g} fps: {err}") from None
        if w.n_windows < 2:
            need = w.step + w.samples_per_window
            raise SpecError(
                f"analysis.spectral.state_length: movie {name!r} has {n} frame(s) at {fps[name]:g} fps, {w.n_windows} "
                f"whole window(s) of {w.samples_per_window} frames (state_length={o.state_length:g} s); spectral "
                f"differentiation needs at least 2 windows ({need} frames): shorten state_length (at most "
                f"{n / fps[name] / 2:g} s) or use a longer movie"
            )


COMMON_WINDOW_MAX_S = 10.0
"""The longest ``state_length`` (seconds) suggested as one that fits every movie of a job."""


def _whole_window(name: str, fps: dict[str, float], state_length: float) -> None:
    """Refuse a ``state_length`` that is no whole number of frames of movie ``name``, suggesting
    one that fits every movie of the job (:func:`common_window`), or saying that none does."""
    try:
        samples_per_window(fps[name], state_length)
    except InputError as err:
        message = f"analysis.spectral.state_length: movie {name!r} at {fps[name]:g} fps: {err}"
        rates = sorted(set(fps.values()))
        if len(rates) > 1:
            listed = ", ".join(f"{r:g}" for r in rates)
            common = common_window(rates)
            if common is None or common > COMMON_WINDOW_MAX_S:
                message += (f"; but the job's movies have frame rates {listed} fps, and no state_length up to "
                            f"{COMMON_WINDOW_MAX_S:g} s is a whole number of frames at all of them: run movies of "
                            "unrelated rates in separate jobs")
            else:
                fit = max(1, round(state_length / common)) * common
                message += (f"; for every movie of the job ({listed} fps) choose a multiple of {float(common):g} s, "
                            f"e.g. state_length={float(fit):g}")
        raise SpecError(message) from None


def common_window(rates: list[float]) -> Fraction | None:
    """The shortest window, in seconds, that is a whole number of frames at every rate (Hz), as an
    exact fraction: the least common multiple of the frame periods ``1 / rate`` (each rate taken as
    the nearest fraction with a denominator up to 1001, e.g. 30000/1001 for 29.97); None for a
    rate that is not a positive number."""
    period = None
    for rate in rates:
        if not rate > 0:
            return None
        step = 1 / Fraction(rate).limit_denominator(1001)
        period = step if period is None else Fraction(math.lcm(period.numerator, step.numerator),
                                                       math.gcd(period.denominator, step.denominator))
    return period


def spectral_lines(spec: JobSpec, counts: dict[str, int], fps: dict[str, float], exact: set[str] | None = None) -> list[str]:
    """One line per movie: frames, frame rate and, for spectral differentiation, its windows
    (``exact``: the sets whose frame counts are known; None: all)."""
    o = spec.analysis.spectral
    lines = []
    for name, rate in fps.items():
        known = name in counts and (exact is None or name in exact)
        line = f"movie {name!r}: {counts[name] if known else 'an unknown number of'} frame(s) at {rate:g} fps"
        if "spectral" in spec.analysis.measures and known:
            w = spectral_windows(counts[name], fs=rate, state_length=o.state_length, overlap=o.overlap)
            line += f"; {w.n_windows} window(s) of {w.samples_per_window} frames, {w.dropped} trailing frame(s) dropped"
        lines.append(line)
    return lines
