"""The two files of an adapter folder, found and read before any method looks at them.

`find_adapter_files` checks the folder holds adapter_config.json and adapter_model.safetensors (naming dangling
symbolic links, adapters in subfolders and pickled weights it will not read). `read_config_json` reads
adapter_config.json as what it must be: UTF-8 JSON holding an object with a string "peft_type", of bounded size.
`config_digest` is the digest by which a save records which adapter_config.json it wrote (see adapter_commit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftlab.errors import AdapterLoadError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 16 * 2**20  # adapter_config.json files are a few kB; this refuses a memory bomb before parsing


def find_adapter_files(folder: Path) -> tuple[Path, Path]:
    """(adapter_config.json, adapter_model.safetensors) of `folder`, or AdapterLoadError saying what is there."""
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise AdapterLoadError(f"{folder} is not a folder; pass the folder that holds {CONFIG_NAME}")
    for path in (config_file, weights_file):
        if path.is_symlink() and not path.exists():
            raise AdapterLoadError(f"{path} is a symbolic link to {path.readlink()}, which does not exist; restore "
                                   "the file it points to, or copy the adapter's files into the folder")
    if not config_file.is_file():
        inside = sorted(p.name for p in folder.iterdir() if (p / CONFIG_NAME).is_file())
        if inside:
            raise AdapterLoadError(f"{folder} has no {CONFIG_NAME} of its own, but its subfolders {inside} hold "
                                   f"adapters (Hugging Face PEFT saves an adapter not named 'default' in "
                                   f"<folder>/<name>/); pass one of them, e.g. {folder / inside[0]}")
        if weights_file.is_file():
            raise AdapterLoadError(f"{folder} has {WEIGHTS_NAME} but no {CONFIG_NAME}: the save that wrote it did "
                                   "not finish. Save the adapter again")
        raise AdapterLoadError(f"{folder} has no {CONFIG_NAME}; is this an adapter folder?")
    if not weights_file.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise AdapterLoadError(f"{folder} has no {WEIGHTS_NAME} (found: {found}). peftlab reads only safetensors, "
                               "never pickled .bin files; re-save the adapter with safe_serialization=True")
    return config_file, weights_file


def read_config_json(config_file: Path) -> dict[str, Any]:
    """adapter_config.json as a dict; AdapterLoadError unless it is UTF-8 JSON holding an object whose "peft_type"
    is a string."""
    size = config_file.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterLoadError(f"{config_file} is {size:,} bytes; an adapter config is a few kB (at most "
                               f"{MAX_CONFIG_BYTES:,} bytes are read). Is this the right file?")
    raw = config_file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AdapterLoadError(f"{config_file} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r});"
                               " JSON files are UTF-8. Re-save the adapter, or convert the file to UTF-8") from None
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of more digits than Python converts
        raise AdapterLoadError(f"{config_file} is not valid JSON: {err}") from None
    except RecursionError:
        raise AdapterLoadError(f"{config_file} nests too deeply to be an adapter config") from None
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{config_file} holds {_json_kind(data)}, not a JSON object; an adapter config is an "
                               'object such as {"peft_type": "LORA", "r": 8, ...}')
    peft_type = data.get("peft_type")
    if not isinstance(peft_type, str):
        raise AdapterLoadError(f"{config_file}: \"peft_type\" is {peft_type!r}; it must name the method as a string, "
                               'e.g. "LORA"')
    return data


def config_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys): the same for any formatting of the same content."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _json_kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
