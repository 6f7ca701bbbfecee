"""A save is all or nothing per adapter folder: saves killed (SIGKILL, real processes) at random moments and right
between the two files' renames leave a folder that loads as exactly the old or the new adapter, or is refused;
temporaries do not pile up; sibling adapters and the user's own files survive; a failed save writes nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.io.adapter_files import adapter_tensors
from peftlab.io.atomic import STAGING_PREFIX
from peftlab.io.folder_lock import LOCK_NAME
from tests.io.children import SITES, adapter, base, save_forever, save_once


def which(folder: Path, expected: dict[str, peftlab.AdaptedModel]) -> str:
    """"A" or "B" when the folder loads as exactly that adapter, "refused" when the load refuses, else "MIXED"."""
    try:
        loaded = peftlab.load(base(), folder)
    except peftlab.AdapterLoadError:
        return "refused"
    tensors = adapter_tensors(loaded.adapter("default"))
    for label, model in expected.items():
        theirs = adapter_tensors(model.adapter("default"))
        if loaded.configs["default"] == model.configs["default"] and tensors.keys() == theirs.keys() \
                and all(torch.equal(tensors[k], theirs[k]) for k in tensors):
            return label
    return "MIXED"


FOLDER_FILES = {"adapter_config.json", "adapter_model.safetensors", "notes.txt", "other"}


def leftovers(folder: Path) -> dict[str, int]:
    """What else the folder holds (a killed save's files), with their sizes in bytes."""
    return {p.name: sum(f.stat().st_size for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
            for p in folder.iterdir() if p.name not in FOLDER_FILES}


def prepared_folder(tmp_path: Path) -> Path:
    """An adapter folder holding A, a sibling adapter in a subfolder and a file of the user's."""
    folder = tmp_path / "adapter"
    adapter("A").save(folder)
    sibling = adapter("B")
    sibling.add_adapter("other", peftlab.LoRA(r=2, targets=["0"]))
    sibling.save(folder, adapter_names="other")
    (folder / "notes.txt").write_text("my notes")
    return folder


def test_random_kills_leave_the_old_or_the_new_adapter(forked, tmp_path: Path) -> None:
    folder = prepared_folder(tmp_path)
    expected = {"A": adapter("A"), "B": adapter("B")}
    other = (folder / "other" / "adapter_model.safetensors").read_bytes()
    rng = random.Random(0)
    outcomes = []
    for _ in range(30):
        child = forked.Process(target=save_forever, args=(str(folder),), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        outcomes.append(which(folder, expected))
        left = leftovers(folder)  # at most the killed save's staging folder and lock file: nothing piles up
        assert len([n for n in left if n.startswith(STAGING_PREFIX)]) <= 1 and set(left) - {LOCK_NAME} == {
            n for n in left if n.startswith(STAGING_PREFIX)}, left
        assert (folder / "notes.txt").read_text() == "my notes"
        assert (folder / "other" / "adapter_model.safetensors").read_bytes() == other
    assert "MIXED" not in outcomes, outcomes
    assert {"A", "B"} <= set(outcomes), outcomes  # the kills did land in the middle of the save loop
    expected["A"].save(folder)  # the next save clears what the killed ones left
    assert leftovers(folder) == {}
    assert which(folder, expected) == "A"


def test_a_save_killed_between_its_renames_is_refused_not_mixed(forked, tmp_path: Path) -> None:
    folder = prepared_folder(tmp_path)
    pause = tmp_path / "paused"
    child = forked.Process(target=save_once, args=(str(folder), "B", str(pause)), daemon=True)
    child.start()
    deadline = time.monotonic() + 60
    while not pause.exists():
        assert time.monotonic() < deadline and child.is_alive(), "the save never reached the pause between renames"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    # the new weights sit beside the old config: refused, naming both files
    with pytest.raises(peftlab.AdapterLoadError, match=r"adapter_model.safetensors and .*adapter_config.json come "
                                                       r"from two different saves"):
        peftlab.load(base(), folder)
    assert any(n.startswith(STAGING_PREFIX) for n in leftovers(folder))
    adapter("B").save(folder)
    assert leftovers(folder) == {}
    assert which(folder, {"A": adapter("A"), "B": adapter("B")}) == "B"


def test_a_torn_pair_is_refused_even_when_the_shapes_fit(tmp_path: Path) -> None:
    """The state a save killed after its first rename leaves, built by hand (the weights of a save of B over A,
    beside A's config), for two adapters whose tensors have the same shapes: only alpha differs (16 vs 512)."""
    a = peftlab.adapt(base(), peftlab.LoRA(r=4, alpha=16, targets=SITES, init="random"))
    b = peftlab.adapt(base(), peftlab.LoRA(r=4, alpha=512, targets=SITES, init="random"))
    a.save(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "adapter_model.safetensors", tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(peftlab.AdapterLoadError, match="two different saves"):
        peftlab.load(base(), tmp_path / "a")


def test_saving_one_adapter_leaves_the_others_and_the_users_files(tmp_path: Path) -> None:
    folder = prepared_folder(tmp_path)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    adapter("B").save(folder)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    changed = {str(k) for k in after if after[k] != before[k]}
    assert changed == {"adapter_model.safetensors", "adapter_config.json"}


def test_saved_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        adapter("A").save(tmp_path / "open")
        os.umask(0o077)
        adapter("A").save(tmp_path / "private")
    finally:
        os.umask(previous)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "open" / name).stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "private" / name).stat().st_mode & 0o777 == 0o600


def _save_as_unprivileged_user(model: peftlab.AdaptedModel, folder: Path) -> str:
    """Save in a forked child that, when run as root (which ignores permissions), first drops to the unprivileged
    user 65534; returns "saved" or the error's type and message."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            model.save(folder)
            message = "saved"
        except BaseException as err:  # noqa: BLE001  (reported to the parent, which asserts on it)
            message = f"{type(err).__name__}: {err}"
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    with os.fdopen(reader) as pipe:
        return pipe.read()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder every user can reach (pytest's own is private to its user)."""
    folder = Path(tempfile.mkdtemp())
    os.chmod(folder, 0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)
    shutil.rmtree(folder)


def test_an_unwritable_folder_is_our_error_and_nothing_is_written(open_tmp: Path) -> None:
    folder = open_tmp / "locked"
    adapter("A").save(folder)
    os.chmod(folder, 0o555)
    before = sorted(os.listdir(folder))
    message = _save_as_unprivileged_user(adapter("B"), folder)
    assert message.startswith(f"AdapterSaveError: cannot write the adapter to {folder}: Permission denied"), message
    assert "nothing was written" in message
    assert sorted(os.listdir(folder)) == before
    assert which(folder, {"A": adapter("A")}) == "A"


def test_a_save_of_several_adapters_that_fails_on_one_writes_none(open_tmp: Path) -> None:
    """The second adapter's folder is read-only: the first adapter's folder, writable, is left as it was too."""
    folder = open_tmp / "out"
    model = adapter("A")
    model.add_adapter("second", peftlab.LoRA(r=2, targets=["0"]))
    model.save(folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    os.chmod(folder, 0o777)  # writable by the unprivileged user
    os.chmod(folder / "second", 0o555)
    changed = adapter("B")
    changed.add_adapter("second", peftlab.LoRA(r=2, targets=["0"], init="random"))
    message = _save_as_unprivileged_user(changed, folder)
    assert message.startswith(f"AdapterSaveError: cannot write the adapter to {folder / 'second'}"), message
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_file_in_the_way_of_a_second_adapter_stops_the_save_before_any_write(tmp_path: Path) -> None:
    model = adapter("A")
    model.add_adapter("second", peftlab.LoRA(r=2, targets=["0"]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "second").write_text("a file where the folder would go")
    with pytest.raises(peftlab.AdapterSaveError, match="second is a file; pass a folder path.*nothing was written"):
        model.save(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["second"]


def test_a_path_too_long_for_the_file_system_is_our_error(tmp_path: Path) -> None:
    folder = tmp_path / ("x" * 300)
    with pytest.raises(peftlab.AdapterSaveError, match="File name too long.*nothing was written"):
        adapter("A").save(folder)
    assert os.listdir(tmp_path) == []


def test_the_save_record_names_the_config_it_wrote(tmp_path: Path) -> None:
    from safetensors import safe_open

    from peftlab.io.adapter_commit import REPLACED_KEY, WRITTEN_KEY
    from peftlab.io.adapter_folder import config_digest

    adapter("A").save(tmp_path)
    first = json.loads((tmp_path / "adapter_config.json").read_text())
    adapter("B").save(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata[WRITTEN_KEY] == config_digest(json.loads((tmp_path / "adapter_config.json").read_text()))
    assert metadata[REPLACED_KEY] == config_digest(first)
