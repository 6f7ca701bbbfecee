"""A lock on a folder, held by one process at a time: a study folder while `peftlab compare` runs in it, an adapter
folder while a save writes it.

The lock is the file "<folder>/.peftlab.lock", locked with the operating system's advisory lock (flock), which the
kernel releases when the holder exits or is killed. The file names its holder (process id, host, start time, what it
does), so that a refused process can say who holds the folder, and a process that finds the file unlocked knows it
takes over a lock that a killed process left behind. Where the file system offers no flock (some network mounts) or
the platform has none, the holder's process id and host decide: a lock whose process no longer runs on this host is
stale and taken over; one held from another host is refused, as it cannot be checked from here.
A clean release deletes the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from peftlab.errors import PeftlabError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".peftlab.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_POLL_SECONDS = 0.1
_UNNAMED_STALE_SECONDS = 60.0  # a note still empty after this long: its writer died


class FolderInUseError(PeftlabError):
    """Another process holds the folder's lock."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The process a lock file names."""

    pid: int
    host: str
    since: str
    purpose: str

    @classmethod
    def this_process(cls, purpose: str) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   purpose)

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """The holder a lock file names, or None for an empty or unreadable note (a holder killed while writing)."""
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["since"]), str(data["purpose"]))
        except (ValueError, TypeError, KeyError):
            return None

    def to_text(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def running(self) -> bool | None:
        """Whether the process still runs: True/False on this host, None from another host (cannot be checked)."""
        if self.host != socket.gethostname():
            return None
        return process_running(self.pid)

    def describe(self) -> str:
        return f"{self.purpose} (process {self.pid} on host {self.host}, since {self.since})"


def process_running(pid: int) -> bool:
    if os.name == "nt":
        return True  # no signal-free check without extra libraries: assume it runs (the lock is then refused)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, purpose: str, *, wait: bool = False) -> Iterator[FolderLock]:
    """Hold "<folder>/.peftlab.lock" for the block (see FolderLock)."""
    lock = FolderLock(folder, purpose, wait=wait)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


class FolderLock:
    """The lock on one folder. `acquire` refuses with FolderInUseError when another process holds it, or with
    `wait` blocks until it is released; afterwards `taken_over` names the killed holder whose lock was stale."""

    def __init__(self, folder: Path, purpose: str, *, wait: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.holder = LockHolder.this_process(purpose)
        self.wait = wait
        self.taken_over: LockHolder | None = None
        self._fd: int | None = None
        self._kernel_lock = False

    def acquire(self) -> None:
        if fcntl is None:
            self._enter_by_process_id()
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                locked = _kernel_lock(fd, self.wait)
            except OSError as err:
                empty = os.fstat(fd).st_size == 0
                os.close(fd)
                if err.errno not in _NO_FLOCK:
                    raise
                if empty:  # the file this open just created: the note-based lock below creates its own
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                self._enter_by_process_id()
                return
            if not locked:
                os.close(fd)
                raise FolderInUseError(self._in_use_message(LockHolder.parse(_read(self.path))))
            if not _same_file(fd, self.path):  # the holder released (deleted) it between our open and lock: retry
                os.close(fd)
                continue
            previous = LockHolder.parse(_read_fd(fd))
            self.taken_over = previous if previous is not None and previous != self.holder else None
            _write_fd(fd, self.holder.to_text())
            self._fd, self._kernel_lock = fd, True
            return

    def _enter_by_process_id(self) -> None:
        """Without a kernel lock the note is the lock, created only if absent. A stale note (its process no longer
        runs on this host, or an empty note older than a minute) is deleted and the creation retried. Two processes
        taking over the same stale note at the same instant could both proceed: only flock excludes that."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                previous = LockHolder.parse(_read(self.path))
                if _stale(previous, self.path):
                    self.taken_over = previous
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                if self.wait:
                    time.sleep(_POLL_SECONDS)
                    continue
                raise FolderInUseError(self._in_use_message(previous)) from None
            _write_fd(fd, self.holder.to_text())
            self._fd = fd
            return

    def _in_use_message(self, holder: LockHolder | None) -> str:
        if holder is None:
            return (f"{self.folder} is in use by another process (it has not written its name yet): wait for it to "
                    f"finish, or stop it; if no process uses the folder, delete {self.path}")
        running = holder.running()
        if running is None:
            hint = (f"wait for it to finish, or stop it. If it no longer runs on host {holder.host} (which cannot be "
                    f"checked from here), delete {self.path}")
        elif running:
            hint = f"wait for it to finish, or stop it (process {holder.pid})"
        else:
            hint = ("that process has ended, but a process it started still holds the lock; stop that one, or wait "
                    "for it")
        return f"{self.folder} is in use by {holder.describe()}: {hint}"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._kernel_lock or LockHolder.parse(_read(self.path)) == self.holder:
                os.unlink(self.path)  # still locked by us: a waiting process then finds its file gone and retries
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def _stale(holder: LockHolder | None, path: Path) -> bool:
    if holder is not None:
        return holder.running() is False
    try:
        return time.time() - path.stat().st_mtime > _UNNAMED_STALE_SECONDS
    except FileNotFoundError:
        return True


def _kernel_lock(fd: int, wait: bool) -> bool:
    """flock the file: True when locked, False when another process holds it (only without `wait`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode("utf-8"))
    os.fsync(fd)
