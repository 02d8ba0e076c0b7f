"""Output piped into a reader that stops early (``daskdiff info OUT | head``; issue 22): the command
ends quietly, as a shell reports a command that SIGPIPE ended (141), with no BrokenPipeError
traceback and no 'Exception ignored' line at exit."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daskdiff import cli


def _closed_pipe() -> io.TextIOWrapper:
    """A text stream on a pipe whose reader has gone (``head`` done)."""
    read, write = os.pipe()
    os.close(read)
    return io.TextIOWrapper(os.fdopen(write, "wb"), encoding="utf-8")


def test_info_into_a_reader_gone_ends_quietly(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("daskdiff.info.describe_results", lambda path: "\n".join(f"line {i}" for i in range(10_000)))
    (tmp_path / "r.nc").touch()
    out = _closed_pipe()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert cli.main(["info", str(tmp_path / "r.nc")]) == 141
        out.write("more")
        out.flush()  # what the interpreter does at exit: the pipe is now os.devnull
    finally:
        monkeypatch.undo()
        out.close()
    assert capsys.readouterr().err == ""


def test_a_broken_pipe_that_is_not_stdout_is_still_a_bug(monkeypatch, capsys, tmp_path):
    def broken(path):
        raise BrokenPipeError("a socket")

    monkeypatch.setattr("daskdiff.info.describe_results", broken)
    assert cli.main(["info", str(tmp_path / "r.nc")]) == 1
    assert "internal error BrokenPipeError" in capsys.readouterr().err


@pytest.mark.subprocess
def test_the_program_piped_into_a_reader_gone_prints_nothing_on_stderr(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command prints
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "daskdiff"), "images", "noise", str(tmp_path / "n"), "--count", "1",
                               "--size", "8"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
    assert len(list((tmp_path / "n").iterdir())) == 1
