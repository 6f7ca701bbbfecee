"""Atomic writes follow the umask and leave no temporary behind; a killed writer's temporaries are found by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peftlab.io.atomic import atomic_path, remove_temporaries, temporary_path, write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "study.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "study.json").stat().st_mode & 0o777 == mode
    assert os.listdir(tmp_path) == ["study.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert (tmp_path / "a.json").read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_a_killed_writers_temporaries_are_removed_by_name(tmp_path: Path) -> None:
    left = [temporary_path(tmp_path / "adapter_model.safetensors"), temporary_path(tmp_path / "adapter_config.json")]
    for path in [*left, tmp_path / ".other.json.abc.tmp", tmp_path / "notes.tmp"]:
        path.write_text("x")
    assert sorted(remove_temporaries(tmp_path, ["adapter_model.safetensors", "adapter_config.json"])) == sorted(left)
    assert sorted(os.listdir(tmp_path)) == [".other.json.abc.tmp", "notes.tmp"]
