"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the old file in place.

A file is written to a temporary ".<name>.<random>.tmp" beside its target, flushed to disk, then renamed over the
target. Temporaries are created like any new file (mode 0o666 less the umask), so the renamed file follows the
user's umask. A process killed mid-write leaves its temporary behind; `remove_temporaries` clears those of chosen
names. Writes of several files that must land together go through a staging folder instead
(`make_staging_folder`), which `remove_staging_folders` clears. Callers of the two hold the folder's lock, so that no
live writer's files are removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
STAGING_PREFIX = ".peftlab-staging-"


def temporary_path(target: Path) -> Path:
    """A fresh temporary name beside `target`: ".<name>.<12 hex digits>.tmp"."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")


def create_temporary(target: Path) -> Path:
    """Create an empty temporary file beside `target` (mode 0o666 less the umask) and return its path."""
    tmp = temporary_path(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def sync_file(path: Path) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (its renames) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; when the block succeeds it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temporary(target)
    try:
        yield tmp
        sync_file(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    sync_folder(target.parent)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def make_staging_folder(folder: Path) -> Path:
    """A new private folder ".peftlab-staging-<12 hex digits>" inside `folder`, for files written before they are
    renamed into `folder` (libraries that write through their own temporaries, such as safetensors, write them
    there too, so that a killed writer leaves everything in one place)."""
    staging = folder / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    staging.mkdir()
    return staging


def remove_staging_folders(folder: Path) -> list[Path]:
    """Delete the staging folders that killed writers left in `folder`; returns them."""
    removed = []
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_temporaries(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries that writes of `names` left in `folder` (a killed writer's); returns them."""
    removed = []
    for name in names:
        for path in folder.glob(f".{name}.*{TEMPORARY_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
