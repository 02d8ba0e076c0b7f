"""Inputs that are not what their names say (issue 26, items 7, 9 and 13): a FIFO or a device named
like an image, a file far larger than any image, a ``.npy`` movie whose header claims gigabytes, an
HTML page saved as ``clip.gif``. Each is read only once it is known to be a regular file of bounded
size, and each gives one line naming the file and what it is, never a hang or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from PIL import Image

from conftest import write_images
from daskdiff.io.image_sets import ImageSetError, resolve_image_set
from daskdiff.io.images import ImageDecodeError, Skipped, load_image, load_images
from jobtools import tiny_spec

BIN = Path(sys.executable).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _daskdiff(*args, cwd, timeout):
    return subprocess.run([str(BIN / "daskdiff"), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=timeout)


def _job_file(tmp_path, spec) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return job


# --- item 7: only regular files are read -------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_fifo_and_dev_zero_among_images_are_skipped_and_the_job_finishes(tmp_path, tiny_model_path):
    """A FIFO left in an image folder (``zz.png``) and ``/dev/zero`` named in a list file used to block
    a worker in ``read()`` forever / read until the nanny killed it: now both are skipped, recorded with
    their reason, and the job covers every valid image."""
    folder_a = write_images(tmp_path / "a", 4, seed=1)
    os.mkfifo(tmp_path / "a" / "zz.png")
    folder_b = write_images(tmp_path / "b", 3, seed=2)
    listing = tmp_path / "b.txt"
    listing.write_text("\n".join([*folder_b, "/dev/zero"]) + "\n")
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(listing)}, tmp_path / "out",
                     cluster={"n_workers": 1, "threads_per_worker": 1, "memory_limit": "3GB"})
    out = _daskdiff("run", _job_file(tmp_path, spec), "--no-progress", cwd=tmp_path, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"skipped (a): {tmp_path / 'a' / 'zz.png'}: not a regular file (FIFO)" in out.stdout
    assert "skipped (b): /dev/zero: not a regular file (character device)" in out.stdout
    with xr.open_dataset(tmp_path / "out" / "differentiation.nc") as ds:
        assert ds["n_images"].sel(image_set="a") == 4 and ds["n_images"].sel(image_set="b") == 3
        for name, paths in (("a", folder_a), ("b", folder_b)):
            kept = sorted(str(p) for p in ds["image_path"].sel(image_set=name).values if p)
            assert kept == sorted(paths)
        skipped = dict(zip(ds["skipped_path"].values, ds["skipped_reason"].values))
        assert skipped == {str(tmp_path / "a" / "zz.png"): "not a regular file (FIFO)",
                           "/dev/zero": "not a regular file (character device)"}
        assert np.isfinite(ds["differentiation"].sel(n_units=-1).isel(repeat=0)).all()


def test_special_files_are_skipped_with_their_kind_and_never_opened_for_a_blocking_read(tmp_path):
    import socket

    good = write_images(tmp_path / "img", 2, seed=3)
    os.mkfifo(tmp_path / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    (tmp_path / "dir.png").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero.png")
    paths = [str(tmp_path / n) for n in ("fifo.png", "sock.png", "dir.png", "zero.png")]
    try:
        images, indices, skipped = load_images([good[0], *paths, good[1]], size=(8, 8))
    finally:
        sock.close()
    assert indices == [0, 5] and images.shape == (2, 8, 8, 3)
    assert [(s.path, s.reason) for s in skipped] == list(zip(paths, [
        "not a regular file (FIFO)", "not a regular file (socket)", "is a folder, not an image file",
        "not a regular file (character device)"]))


@pytest.mark.subprocess
def test_a_fifo_swapped_in_while_files_are_read_never_blocks(tmp_path):
    """The race between the check and the open: while another process keeps replacing a path by a
    regular image and by a FIFO (``os.replace``), the path is read at least 2000 times, and until
    both kinds have been read (on loaded cores the swapper can sleep through many reads); every
    read gives the image or refuses the FIFO, none waits."""
    (image,) = write_images(tmp_path / "img", 1, seed=4, size=(8, 8))
    expected = np.asarray(Image.open(image).convert("RGB"))
    target = tmp_path / "swap.png"
    swapper = subprocess.Popen([sys.executable, "-c", (
        "import os, shutil, sys\n"
        "image, target = sys.argv[1:]\n"
        "k = 0\n"
        "while True:\n"
        "    tmp = f'{target}.{k}'\n"
        "    shutil.copyfile(image, tmp) if k % 2 else os.mkfifo(tmp)\n"
        "    os.replace(tmp, target)\n"
        "    k += 1\n"), image, str(target)])
    outcomes, stop = [], threading.Event()

    def read():
        while (len(outcomes) < 2000 or len(set(outcomes)) < 2) and not stop.is_set():
            try:
                outcomes.append(bool((load_image(target, (8, 8)) == expected).all()))
            except ImageDecodeError as error:
                outcomes.append(error.reason)

    reader = threading.Thread(target=read, daemon=True)  # a read blocked on a FIFO never returns
    try:
        while not target.exists():
            pass
        reader.start()
        reader.join(timeout=60)
    finally:
        stop.set()
        swapper.kill()
        swapper.wait()
    reader.join(timeout=5)  # a loop told to stop ends after its current read; a blocked read never does
    assert not reader.is_alive(), f"a read blocked on the FIFO, or one kind was never read, after {len(outcomes)} reads: {set(outcomes)}"
    assert set(outcomes) == {True, "not a regular file (FIFO)"}, set(outcomes)


def test_a_file_replaced_by_a_fifo_right_after_its_check_is_refused_not_waited_on(tmp_path, monkeypatch):
    """The race made certain: the image is replaced by a FIFO just after ``os.stat`` has seen a regular
    file, before it is opened. The open must not wait for a writer (``O_NONBLOCK``), and the opened
    descriptor is checked again (``os.fstat``)."""
    (image,) = write_images(tmp_path / "img", 1, seed=4, size=(8, 8))
    target = tmp_path / "swap.png"
    target.write_bytes(Path(image).read_bytes())
    real_stat, swapped = os.stat, []

    def stat_then_swap(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(target) and not swapped:
            swapped.append(True)
            os.unlink(target)
            os.mkfifo(target)
        return result

    outcome = []
    monkeypatch.setattr(os, "stat", stat_then_swap)
    reader = threading.Thread(target=lambda: outcome.append(load_images([target], size=(8, 8))[2]), daemon=True)
    reader.start()
    reader.join(timeout=20)
    monkeypatch.undo()
    if reader.is_alive():  # blocked in open(): give it a writer, then fail
        os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the read blocked on the FIFO that replaced the image after its check")
    assert swapped and outcome == [[Skipped(str(target), "not a regular file (FIFO)")]]


def test_a_file_larger_than_any_image_is_skipped_unread(tmp_path):
    """A sparse 1 GB file named ``.png`` is larger than any image Pillow would decode (8 bytes per pixel
    of ``PIL.Image.MAX_IMAGE_PIXELS`` plus 64 MiB): skipped from its size, before a byte is read."""
    import resource

    assert 8 * Image.MAX_IMAGE_PIXELS + 64 * 2**20 < 2**30  # Pillow's default: 783 MB
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(2**30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError, match=r"huge\.png': 1\.07 GB, larger than any image file \(783 MB at most\); "
                                               r"raise PIL\.Image\.MAX_IMAGE_PIXELS"):
        load_image(big)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000, f"reading grew the peak memory by {grown_kb} KB"


def test_a_set_or_list_file_that_is_a_fifo_or_device_is_refused_in_one_line(tmp_path):
    os.mkfifo(tmp_path / "photos")
    with pytest.raises(ImageSetError, match=r"'.*photos' is a FIFO, not a folder, glob pattern or list file"):
        resolve_image_set(tmp_path / "photos")
    with pytest.raises(ImageSetError, match=r"'/dev/zero' is a character device, not a folder"):
        resolve_image_set("/dev/zero")
    os.mkfifo(tmp_path / "list.txt")
    os.symlink(tmp_path / "list.txt", tmp_path / "linked.txt")
    with pytest.raises(ImageSetError, match=r"linked\.txt' is a FIFO"):
        resolve_image_set(tmp_path / "linked.txt")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(2**30)
    with pytest.raises(ImageSetError, match=r"cannot read list file '.*huge\.txt': 1\.07 GB, larger than any list file "
                                            r"\(67\.1 MB at most\)"):
        resolve_image_set(huge)


# --- item 9: a .npy movie is bounded from its header ---------------------------------------------


def _npy_header_only(path, shape, *, data_bytes=None, descr="|u1"):
    """A ``.npy`` file whose header says ``shape``; its data is a hole (sparse) of the full size, or
    ``data_bytes`` long (truncated)."""
    from numpy.lib import format as npy

    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + (int(np.prod(shape)) if data_bytes is None else data_bytes))
    return path


def _movie_spec(tmp_path, tiny_model_path, clip: dict, **overrides):
    write_images(tmp_path / "still", 3, seed=5)
    spec = tiny_spec(tiny_model_path, {"clip": clip, "still": str(tmp_path / "still")}, tmp_path / "out", **overrides)
    return _job_file(tmp_path, spec)


@pytest.mark.timeout(120)
def test_a_4_gb_npy_movie_is_counted_from_its_header_in_a_dry_run(tmp_path, tiny_model_path):
    """A sparse ``.npy`` whose header says 4000 frames of 1000 x 1000 RGB (12 GB) is counted as 4000
    images in the estimate, from its header, and the dry run reads none of its frames."""
    clip = _npy_header_only(tmp_path / "clip.npy", (4000, 1000, 1000, 3))
    job = _movie_spec(tmp_path, tiny_model_path, {"path": str(clip), "fps": 30})
    out = _daskdiff("run", job, "--dry-run", cwd=tmp_path, timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "image set 'clip': not generated in a dry run; a run generates 4000 image(s)" in out.stdout
    assert "estimate: 4003 image(s)" in out.stdout
    assert "image set 'clip': 4000 image(s) (a movie at 30 fps)" in out.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_a_truncated_npy_movie_is_refused_before_anything_runs(tmp_path, tiny_model_path):
    clip = _npy_header_only(tmp_path / "clip.npy", (4000, 1000, 1000, 3), data_bytes=1000)
    job = _movie_spec(tmp_path, tiny_model_path, {"path": str(clip), "fps": 30})
    out = _daskdiff("run", job, cwd=tmp_path, timeout=100)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert (f"daskdiff run: error: movie array '{clip}' is truncated: its header says 4000 frame(s) of shape "
            f"(1000, 1000, 3) uint8 (12000000128 bytes with the header), but the file holds 1128 bytes") in out.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_writing_a_large_npy_movie_holds_one_frame_at_a_time(tmp_path):
    """The frames of a 200-frame 1000 x 1000 movie (600 MB as RGB) are written as PNGs, in a process
    whose peak memory grows by far less than the movie (it used to hold every frame, twice)."""
    clip = _npy_header_only(tmp_path / "clip.npy", (200, 1000, 1000))
    script = (
        "import resource, sys\n"
        "from daskdiff.stimuli.registry import generate\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "paths = generate('movie', sys.argv[2], movie=sys.argv[1], fps=30)\n"
        "print(len(paths), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(clip), str(tmp_path / "frames")], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n, grown_kb = map(int, out.stdout.split())
    assert n == 200 and grown_kb < 150_000, f"writing the movie grew the peak memory by {grown_kb} KB"
    assert np.asarray(Image.open(tmp_path / "frames" / "frame-000199.png")).shape == (1000, 1000, 3)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_small_npy_movie_gives_its_frames(tmp_path, order):
    """Frame by frame (C order) or through a memory map (Fortran order), the frames written are the array's."""
    from daskdiff.stimuli.registry import generate

    rng = np.random.default_rng(7)
    movie = np.asarray(rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8), order=order)
    np.save(tmp_path / "clip.npy", movie)
    paths = generate("movie", tmp_path / "frames", movie=str(tmp_path / "clip.npy"), fps=12, n_frames=4)
    written = np.stack([np.asarray(Image.open(p)) for p in paths])
    np.testing.assert_array_equal(written, movie[:4])
    grey = rng.integers(0, 65536, (3, 4, 5), dtype=np.uint16)
    np.save(tmp_path / "grey.npy", grey.astype(">u2"))  # big-endian 16-bit: the header's dtype is used
    paths = generate("movie", tmp_path / "grey", movie=str(tmp_path / "grey.npy"), fps=12)
    expected = np.repeat(np.rint(grey * (255 / 65535)).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in paths]), expected)


# --- item 13: a file that is not an image or movie at all -----------------------------------------

HTML = "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"


@pytest.mark.timeout(120)
def test_an_html_page_named_gif_as_a_movie_is_refused_in_one_line(tmp_path, tiny_model_path):
    (tmp_path / "clip.gif").write_text(HTML)
    job = _movie_spec(tmp_path, tiny_model_path, {"path": str(tmp_path / "clip.gif")})
    out = _daskdiff("run", job, cwd=tmp_path, timeout=100)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ffmpeg" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert (f"daskdiff run: error: '{tmp_path / 'clip.gif'}' is not a movie file: it seems to be an HTML page; give "
            "an animated GIF, APNG or WebP, a video file, a .npy array or a folder of frames") in out.stderr
    assert not (tmp_path / "out").exists()


def test_an_html_page_named_gif_among_images_is_skipped_as_an_html_page(tmp_path):
    good = write_images(tmp_path / "img", 2, seed=6)
    (tmp_path / "img" / "page.gif").write_text(HTML)
    (tmp_path / "img" / "notes.png").write_text("remember to crop these\n")
    paths = resolve_image_set(tmp_path / "img")
    _, indices, skipped = load_images(paths, size=(8, 8))
    assert [paths[i] for i in indices] == good
    assert {Path(s.path).name: s.reason for s in skipped} == {
        "page.gif": "not an image file (Pillow cannot identify its format): it seems to be an HTML page",
        "notes.png": "not an image file (Pillow cannot identify its format): it seems to be a text file",
    }


# --- the same class elsewhere: every file daskdiff reads is a regular file of bounded size ------------


@pytest.mark.cluster
@pytest.mark.timeout(560)
def test_a_fifo_in_place_of_a_shard_or_partial_result_is_recomputed_on_resume(tmp_path, tiny_model_path):
    """A FIFO left where a shard or a partial result was (a tool, a careless colleague) used to block the
    worker that opened it; now the shard is extracted again and the partial recomputed, with the same
    results as the first run."""
    write_images(tmp_path / "a", 4, seed=1)
    write_images(tmp_path / "b", 4, seed=2)
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, tmp_path / "out",
                     cluster={"n_workers": 1, "threads_per_worker": 1, "memory_limit": "3GB"})
    job = _job_file(tmp_path, spec)
    first = _daskdiff("run", job, "--no-progress", cwd=tmp_path, timeout=250)
    assert first.returncode == 0, first.stderr[-3000:]
    with xr.open_dataset(tmp_path / "out" / "differentiation.nc") as ds:
        before = ds["differentiation"].load()
    shard = sorted((tmp_path / "out" / "activations" / "a").glob("shard-*.nc"))[-1]
    partial = sorted((tmp_path / "out" / "partial").glob("b--*.npz"))[0]
    for path in (shard, partial):
        path.unlink()
        os.mkfifo(path)
    again = _daskdiff("run", job, "--no-progress", cwd=tmp_path, timeout=250)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"set 'a': shard {int(shard.stem.split('-')[1])} was extracted again because it is a FIFO, not a shard file" in again.stdout
    assert shard.is_file() and partial.is_file()
    with xr.open_dataset(tmp_path / "out" / "differentiation.nc") as ds:
        xr.testing.assert_identical(ds["differentiation"].load(), before)


def test_a_partial_result_whose_zip_claims_more_than_it_holds_is_recomputed(tmp_path):
    """A partial result is an uncompressed .npz: a compressed one whose arrays claim more bytes than
    the file (a zip bomb) is refused before it is inflated, and removed to be recomputed."""
    from daskdiff.io.partials import reuse_partial, write_partial

    path = tmp_path / "p.npz"
    write_partial(path, {"d": np.arange(6.0).reshape(2, 3)})
    assert reuse_partial(path, {"d": (2, 3)})[0]["d"].tolist() == [[0, 1, 2], [3, 4, 5]]
    np.savez_compressed(path, d=np.zeros((2, 50_000_000)))  # 800 MB of zeros in under 1 MB
    assert path.stat().st_size < 2**20
    arrays, warning = reuse_partial(path, {"d": (2, None)})
    assert arrays is None and not path.exists()
    assert warning is not None and "is corrupt" in warning


def test_a_fifo_movie_record_or_scheduler_file_is_refused_without_waiting(tmp_path):
    from daskdiff.errors import InputError
    from daskdiff.pipeline.cluster import connect
    from daskdiff.pipeline.spec_cluster import ClusterSection
    from daskdiff.stimuli.movie import load_movie

    write_images(tmp_path / "movie", 3, seed=8)
    os.mkfifo(tmp_path / "movie" / "movie.json")
    with pytest.raises(InputError, match=r"cannot read .*movie\.json: not a regular file \(FIFO\)"):
        load_movie(tmp_path / "movie")
    os.mkfifo(tmp_path / "scheduler.json")
    with pytest.raises(InputError, match=r"--scheduler-file .*scheduler\.json: cannot read it \(not a regular file \(FIFO\)\)"):
        with connect(ClusterSection(), scheduler_file=str(tmp_path / "scheduler.json"), echo=lambda *a: None):
            pass


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin is deprecated:DeprecationWarning")
def test_an_html_page_as_an_augment_source_is_named_not_a_traceback(tmp_path):
    from daskdiff.errors import InputError
    from daskdiff.stimuli.registry import generate

    (tmp_path / "photo.jpg").write_text(HTML)
    with pytest.raises(InputError, match=r"source '.*photo\.jpg' is not an image imageio can read: it seems to be an HTML page") as caught:
        generate("augment", tmp_path / "out", source=str(tmp_path / "photo.jpg"), count=2)
    assert caught.value.__cause__ is None and "ffmpeg" not in str(caught.value)
    assert not (tmp_path / "out").exists()
