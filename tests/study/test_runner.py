"""A study folder is locked while a study runs in it: a second `peftlab compare` on the same --out refuses with the
first one's process id and host, and a lock left by a killed process is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab.cli import main
from peftlab.io.folder_lock import LOCK_NAME, LockHolder
from peftlab.study.cli import study_from_args
from peftlab.study.results import append_record
from tests.io.children import hold_lock
from tests.study.conftest import MINI, parse, read_results, run_cli

NO_TARGET = "lora:targets=nomatch"  # fails in its worker as soon as it is attached: a short study


def test_a_second_compare_on_a_folder_in_use_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first `peftlab compare` is a real process; once it holds the folder, a second one (here, in this process)
    stops before running anything. The first is then killed: its lock stays behind, naming it."""
    out = tmp_path / "study"
    argv = ["compare", *MINI, "--methods", NO_TARGET, "--no-report", "--out", str(out)]
    peftlab = Path(sys.executable).with_name("peftlab")
    first = subprocess.Popen([str(peftlab), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (holder := LockHolder.parse(_read(out / LOCK_NAME))) is None:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        assert holder.pid == first.pid and holder.purpose.startswith("a study (peftlab compare")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is in use by a study (peftlab compare" in err
        assert f"(process {first.pid} on host {socket.gethostname()}" in err and "wait for it to finish" in err
        assert not (out / "results.jsonl").exists() or len(read_results(out)) <= 1  # the second ran nothing
    finally:
        first.kill()
        first.wait()
    assert LockHolder.parse(_read(out / LOCK_NAME)).pid == first.pid  # left by the killed study, to be taken over


def test_a_lock_left_by_a_killed_study_is_taken_over(forked, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    out.mkdir()
    argv = ("compare", *MINI, "--methods", "bitfit", "--no-report", "--out", str(out))
    for spec in study_from_args(parse(*argv)).runs():  # every run recorded: resuming runs nothing
        append_record(out, {"run_id": spec.run_id, "status": "failed", "error": "earlier"})
    ready = tmp_path / "ready"
    killed = forked.Process(target=hold_lock, args=(str(out), "a study (peftlab compare)", str(ready)), daemon=True)
    killed.start()
    while not ready.exists():
        assert killed.is_alive()
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    assert run_cli(*argv) == 1
    assert f"taking over the lock left by a study (peftlab compare) (process {killed.pid} on host " \
           f"{socket.gethostname()}" in capsys.readouterr().out
    assert not (out / LOCK_NAME).exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
