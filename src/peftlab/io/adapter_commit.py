"""Writing adapter folders as units, and telling at load time whether a folder's two files come from one save.

One rename cannot replace two files short of replacing their folder, and the folder of the adapter "default" also
holds the other adapters' subfolders (Hugging Face PEFT's layout) and whatever else the user keeps there; swapping
it would hide or delete those. So each file is replaced by its own rename, the weights first, and the weights file
records in its safetensors metadata which adapter_config.json its save wrote and which one it replaced:

    peftlab_file_config_sha256      digest of the adapter_config.json this save writes (adapter_folder.config_digest)
    peftlab_replaces_config_sha256  digest of the adapter_config.json that was there (absent in a new folder)

A save killed between the renames leaves new weights beside the config their save replaced, which the second record
names, so a load refuses the pair instead of mixing two adapters. A config matching the first record is confirmed;
one matching neither was edited after the save and is read as it stands (as Hugging Face PEFT reads it).

A save locks each folder (folder_lock, waiting for another save of it), deletes the staging folders that killed saves
left there, writes both files into a new staging folder inside it (safetensors' own temporary lands there too) and
flushes them to disk. Only when every folder of the call is staged are the files renamed into place: an error while
writing (no permission, a full disk, a name too long) leaves every folder as it was and raises AdapterSaveError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from peftlab.errors import AdapterLoadError, AdapterSaveError
from peftlab.io.adapter_folder import CONFIG_NAME, WEIGHTS_NAME, config_digest, read_config_json
from peftlab.io.atomic import make_staging_folder, remove_staging_folders, sync_file, sync_folder
from peftlab.io.folder_lock import folder_lock

WRITTEN_KEY = "peftlab_file_config_sha256"
REPLACED_KEY = "peftlab_replaces_config_sha256"
# Test hook: when set to a path, a save creates that file between its two renames and sleeps, so that a test can
# kill it exactly there. Never set outside tests.
PAUSE_ENV = "PEFTLAB_TEST_PAUSE_BETWEEN_RENAMES"


class ConfigSource(enum.Enum):
    """Where a folder's config comes from: always adapter_config.json; the weights file's record may confirm it."""

    CONFIRMED = "adapter_config.json, confirmed by adapter_model.safetensors (one peftlab save wrote both)"
    EDITED = ("adapter_config.json, edited after peftlab saved the folder (the save's record in "
              "adapter_model.safetensors names another config); read as it stands, as Hugging Face PEFT reads it")
    UNRECORDED = ("adapter_config.json (no peftlab save record in adapter_model.safetensors: written by Hugging Face "
                  "PEFT or another tool)")


def config_source(config: Mapping[str, Any], metadata: Mapping[str, str], config_file: Path,
                  weights_file: Path) -> ConfigSource:
    """How the weights file's save record relates to `config` (the parsed adapter_config.json); AdapterLoadError
    when the two files come from two saves, the second one interrupted between its renames."""
    written = metadata.get(WRITTEN_KEY)
    if written is None:
        return ConfigSource.UNRECORDED
    digest = config_digest(config)
    if digest == written:
        return ConfigSource.CONFIRMED
    if digest == metadata.get(REPLACED_KEY):
        raise AdapterLoadError(
            f"{weights_file} and {config_file} come from two different saves: the weights were written by a save "
            f"that replaced this {CONFIG_NAME} and stopped (e.g. was killed) before writing its own. Loading them "
            "together would mix two adapters; save the adapter again, or restore both files from a copy")
    return ConfigSource.EDITED


@dataclasses.dataclass
class AdapterFiles:
    """What a save writes to one folder."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


@dataclasses.dataclass
class _Staged:
    """Both files of one folder, written into a staging folder inside it, waiting to be renamed into place."""

    folder: Path
    staging: Path
    done: bool = False

    def commit(self) -> None:
        os.replace(self.staging / WEIGHTS_NAME, self.folder / WEIGHTS_NAME)
        pause = os.environ.get(PAUSE_ENV)
        if pause:
            Path(pause).write_text(str(os.getpid()), encoding="utf-8")
            time.sleep(3600)
        os.replace(self.staging / CONFIG_NAME, self.folder / CONFIG_NAME)
        sync_folder(self.folder)
        self.done = True
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_adapter_folders(items: Sequence[AdapterFiles]) -> None:
    """Write each item's adapter_config.json and adapter_model.safetensors into its folder (see the module doc)."""
    created: list[Path] = []
    staged: list[_Staged] = []
    current = items[0].folder if items else Path()
    try:
        for item in items:
            current = item.folder
            _check_no_file_in_the_way(item.folder)
        with contextlib.ExitStack() as locks:
            for item in items:
                current = item.folder
                created += [p for p in (item.folder, *item.folder.parents) if not p.exists()]  # deepest first
                item.folder.mkdir(parents=True, exist_ok=True)
                locks.enter_context(folder_lock(item.folder, "peftlab save", wait=True))
                staged.append(_stage(item))
            for each in staged:
                current = each.folder
                each.commit()
    except OSError as err:
        _undo(staged, created)
        written = [str(s.folder) for s in staged if s.done]
        state = f"; already written: {', '.join(written)}" if written else "; nothing was written"
        raise AdapterSaveError(f"cannot write the adapter to {current}: {err.strerror or err}"
                               f"{f' ({err.filename})' if err.filename else ''}{state}. Choose a folder you can "
                               "write to, with free space, and a shorter path if the name is too long") from None
    except BaseException:
        _undo(staged, created)
        raise


def _check_no_file_in_the_way(folder: Path) -> None:
    blocking = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        raise AdapterSaveError(f"cannot save adapters to {folder}: {blocking} is a file; pass a folder path (it is "
                               "created if missing); nothing was written")


def _stage(item: AdapterFiles) -> _Staged:
    remove_staging_folders(item.folder)
    metadata = {**item.metadata, WRITTEN_KEY: config_digest(item.config)}
    replaced = _current_config_digest(item.folder / CONFIG_NAME)
    if replaced is not None:
        metadata[REPLACED_KEY] = replaced
    staged = _Staged(item.folder, make_staging_folder(item.folder))
    try:
        weights, config = staged.staging / WEIGHTS_NAME, staged.staging / CONFIG_NAME
        os.close(os.open(weights, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = weights.stat().st_mode & 0o777  # as created: 0o666 less the umask
        save_file(item.tensors, str(weights), metadata=metadata)
        os.chmod(weights, mode)  # safetensors writes its file private (0o600) whatever the umask
        config.write_text(json.dumps(item.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        sync_file(weights)
        sync_file(config)
    except BaseException:
        staged.discard()
        raise
    return staged


def _current_config_digest(config_file: Path) -> str | None:
    if not config_file.is_file():
        return None
    try:
        return config_digest(read_config_json(config_file))
    except AdapterLoadError:  # not an adapter config: nothing a load could mistake for one
        return None


def _undo(staged: list[_Staged], created: list[Path]) -> None:
    for each in staged:
        if not each.done:
            each.discard()
    for folder in created:  # deepest first; only folders left empty
        with contextlib.suppress(OSError):
            folder.rmdir()
