"""A folder lock held by a real process refuses a second one, naming the holder; a lock left by a killed process is
taken over; with `wait` a second process blocks until the first releases. Both with the kernel's flock and, as on a
file system without it, with the holder's process id and host alone."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from peftlab.io import folder_lock
from peftlab.io.folder_lock import LOCK_NAME, FolderInUseError
from tests.io.children import hold_lock


def start_holder(forked, folder: Path, tmp_path: Path, kernel_lock: bool = True):
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    child = forked.Process(target=hold_lock, args=(str(folder), "the first holder", str(ready), kernel_lock),
                           daemon=True)  # killed when the tests end, should a failing test leave it running
    child.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert child.is_alive() and time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.01)
    return child


@pytest.mark.parametrize("kernel_lock", [True, False], ids=["flock", "process-id"])
def test_a_held_lock_refuses_and_a_killed_holders_lock_is_taken_over(forked, kernel_lock: bool, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernel_lock:
        monkeypatch.setattr(folder_lock, "fcntl", None)
    holder = start_holder(forked, tmp_path, tmp_path, kernel_lock)
    host = socket.gethostname()
    with pytest.raises(FolderInUseError, match=rf"is in use by the first holder \(process {holder.pid} on host "
                                               rf"{host}, since .*\): wait for it to finish, or stop it"):
        folder_lock.FolderLock(tmp_path, "the second").acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert (tmp_path / LOCK_NAME).exists()  # the killed holder could not clean up
    with folder_lock.folder_lock(tmp_path, "the second") as lock:
        assert lock.taken_over is not None and lock.taken_over.pid == holder.pid
        assert lock.taken_over.purpose == "the first holder" and lock.taken_over.host == host
    assert not (tmp_path / LOCK_NAME).exists()  # a clean release removes the lock file


def test_a_lock_held_from_another_host_is_refused_with_the_way_out(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flock, a holder on another host cannot be checked from here: refused, saying which file to delete."""
    monkeypatch.setattr(folder_lock, "fcntl", None)
    note = folder_lock.LockHolder(pid=1, host="elsewhere", since="2025-01-01T00:00:00+00:00", purpose="a study")
    (tmp_path / LOCK_NAME).write_text(note.to_text())
    with pytest.raises(FolderInUseError, match=rf"process 1 on host elsewhere.*If it no longer runs on host "
                                               rf"elsewhere \(which cannot be checked from here\), delete "
                                               rf"{tmp_path / LOCK_NAME}"):
        folder_lock.FolderLock(tmp_path, "the second").acquire()


def test_waiting_for_a_lock_blocks_until_the_holder_is_gone(forked, tmp_path: Path) -> None:
    holder = start_holder(forked, tmp_path, tmp_path)
    start = time.monotonic()
    threading.Timer(0.5, lambda: os.kill(holder.pid, signal.SIGKILL)).start()
    with folder_lock.folder_lock(tmp_path, "a waiting save", wait=True) as lock:
        assert time.monotonic() - start >= 0.4 and lock.taken_over.pid == holder.pid
    holder.join()
