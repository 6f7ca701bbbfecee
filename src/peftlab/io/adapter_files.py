"""Adapter folders in Hugging Face PEFT's layout: adapter_config.json + adapter_model.safetensors.

Tensor keys are "base_model.model.<module path>.<site key>" for tensors living at a module (lora_A.weight,
lora_magnitude_vector, a saved head's weight, ...; the prefix is the method's file format's `file_prefix`) and bare
names for model-level tensors (prompt_embeddings). What adapter_config.json holds is the method's file format's
business (io/formats.py); this module reads and writes folders.
Only JSON and safetensors are ever read. Our full config travels in the safetensors metadata ("peftlab_config"), so
options Hugging Face PEFT lacks survive a round trip without adding unknown keys to adapter_config.json. Once
adapter_config.json is edited (its digest no longer matches the one in the metadata), the JSON file is read instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from peftlab._version import __version__
from peftlab.core.config import REGISTERED, MethodConfig
from peftlab.core.model_inputs import hf_task_type
from peftlab.core.sites import SiteRole
from peftlab.core.targets import AUTO_SAVED_HEADS, name_matches
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterLoadError, ConfigError, PeftlabError
from peftlab.io.atomic import atomic_path, write_text_atomic
from peftlab.io.formats import FileFormat

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_tensors(adapter: AdapterView, expected: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of one adapter under its file key (`expected`: the ones a load of it must supply)."""
    prefix = adapter.config.file_format.file_prefix
    tensors: dict[str, torch.Tensor] = {}
    for path, state in adapter.state(expected).items():
        for key, value in state.items():
            tensors[f"{prefix}{path}.{key}" if path else key] = value
    return tensors


def save_adapter(adapter: AdapterView, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write one adapter to `folder` atomically (each file replaced in one rename). `tensors`: the adapter's
    tensors as `adapter_tensors` gives them, when the caller already has them whole (FSDP gathers its shards)."""
    config = adapter.config
    file_config = config.file_format.to_file(adapter)
    hf_config = getattr(adapter.base_model, "config", None)
    file_config["base_model_name_or_path"] = getattr(hf_config, "_name_or_path", None)
    if file_config.get("task_type") is None and hf_config is not None:
        file_config["task_type"] = _task_type(adapter.base_model, adapter.paths(SiteRole.SAVED))
    source = adapter_tensors(adapter) if tensors is None else tensors
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in source.items()}
    # Our own keys go to the safetensors metadata: Hugging Face PEFT warns about unknown adapter_config.json keys.
    metadata = {"format": "pt", "peftlab_config": json.dumps(config.to_dict()), "peftlab_version": __version__,
                "peftlab_file_config_sha256": _digest(file_config)}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(file_config, indent=2, sort_keys=True) + "\n")


def _task_type(base: torch.nn.Module, saved: list[str]) -> str | None:
    """The task_type that lets Hugging Face PEFT's AutoPeftModel* classes pick the model class. HF PEFT's
    classification tasks expect the head's tensors in the file, so without a saved head the field stays empty."""
    task = hf_task_type(base)
    has_head = any(path.split(".")[-1] in AUTO_SAVED_HEADS for path in saved)
    return None if task in ("SEQ_CLS", "TOKEN_CLS") and not has_head else task


def read_adapter_config(folder: Path) -> MethodConfig:
    """The method config stored in an adapter folder (ours or Hugging Face PEFT's)."""
    return _read_config(folder)[0]


def _read_config(folder: Path) -> tuple[MethodConfig, bool]:
    """The folder's method config, and whether it is our own full config (else read from HF PEFT's fields)."""
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise AdapterLoadError(f"{folder} is not a folder; pass the folder that holds {CONFIG_NAME}")
    if not config_file.is_file():
        inside = sorted(p.name for p in folder.iterdir() if (p / CONFIG_NAME).is_file())
        if inside:
            raise AdapterLoadError(f"{folder} has no {CONFIG_NAME} of its own, but its subfolders {inside} hold "
                                   f"adapters (Hugging Face PEFT saves an adapter not named 'default' in "
                                   f"<folder>/<name>/); pass one of them, e.g. {folder / inside[0]}")
        raise AdapterLoadError(f"{folder} has no {CONFIG_NAME}; is this an adapter folder?")
    if not weights_file.is_file():
        found = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise AdapterLoadError(f"{folder} has no {WEIGHTS_NAME} (found: {found}). peftlab reads only safetensors, "
                               "never pickled .bin files; re-save the adapter with safe_serialization=True")
    try:
        data: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{config_file} is not valid JSON: {err}") from None
    try:
        ours = _own_config(_metadata(weights_file), data)
        if ours is not None:
            return MethodConfig.from_dict(json.loads(ours)), True
        return _format_for(data, config_file).from_file(data), False
    except (ConfigError, TypeError, ValueError) as err:  # a field of the wrong type or form
        raise AdapterLoadError(f"{config_file}: {err}") from None


def _format_for(data: dict[str, Any], config_file: Path) -> FileFormat:
    """The one registered file format that claims this adapter_config.json."""
    peft_type = data.get("peft_type")
    formats = [cls.file_format for cls in REGISTERED.values() if cls.file_format.peft_type == peft_type]
    if not formats:
        known = sorted({c.file_format.peft_type for c in REGISTERED.values()})
        raise AdapterLoadError(f"{config_file}: peft_type {peft_type!r} is not a method peftlab implements "
                               f"(peftlab reads: {', '.join(map(str, known))})")
    claiming = [f for f in formats if f.claims(data)]
    if len(claiming) != 1:
        names = ", ".join(f.config_cls.card.id for f in claiming or formats)
        raise AdapterLoadError(f"{config_file}: {len(claiming)} of peftlab's {peft_type} formats ({names}) read these "
                               "fields; the file mixes options of several variants")
    return claiming[0]


def _digest(file_config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(file_config, sort_keys=True).encode()).hexdigest()


def _own_config(metadata: dict[str, str], file_config: dict[str, Any]) -> str | None:
    """Our full config from the metadata, unless adapter_config.json was edited since we wrote it: then the JSON
    file is the truth, as it is for Hugging Face PEFT, and it is read as HF PEFT's."""
    written = metadata.get("peftlab_file_config_sha256")
    if written is not None and written != _digest(file_config):
        return None
    return metadata.get("peftlab_config")


def _metadata(weights_file: Path) -> dict[str, str]:
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for corrupt headers)
        raise AdapterLoadError(f"{weights_file} is not a readable safetensors file: {err}") from None


def load_adapter_into(model: AdaptedModel, folder: Path, name: str) -> None:
    """Add the adapter stored in `folder` to `model` under `name`; on any mismatch nothing is left attached."""
    config, own = _read_config(folder)
    if not own:
        config = _present_modules_to_save(config, model.get_base_model())
    try:
        model.add_adapter(name, config)
    except PeftlabError as err:
        if isinstance(err, AdapterLoadError):
            raise
        raise AdapterLoadError(f"the adapter in {folder} does not fit this model: {err}") from None
    try:
        _load_tensors(model.adapter(name), folder / WEIGHTS_NAME)
    except BaseException:
        model.delete_adapter(name)
        raise


def load_adapter_weights(model: AdaptedModel, name: str, folder: Path) -> None:
    """Overwrite the tensors of the existing adapter `name` with those saved in `folder` (a checkpoint of it);
    AdapterLoadError when the folder holds another method or configuration."""
    config, _ = _read_config(folder)
    if config != model.configs[name]:
        raise AdapterLoadError(f"{folder} holds a {type(config).card.name} adapter configured as {config.to_dict()}, "
                               f"not adapter {name!r} of this model ({model.configs[name].to_dict()})")
    _load_tensors(model.adapter(name), folder / WEIGHTS_NAME)


def _present_modules_to_save(config: MethodConfig, model: torch.nn.Module) -> MethodConfig:
    """Hugging Face PEFT ignores modules_to_save entries that name no module of the model (its SEQ_CLS task always
    writes ["classifier", "score"]); its files are read the same way. Saved tensors are still checked one by one."""
    wanted = config.modules_to_save
    if not wanted:
        return config
    names = [n for n, _ in model.named_modules() if n]
    present = tuple(key for key in wanted if any(name_matches(n, (key,)) for n in names))
    return config if present == wanted else config.replace(modules_to_save=present)


def _hf_wrapper_prefixes(adapter: AdapterView) -> tuple[str, ...]:
    """Hugging Face PEFT's bias="all" also writes the biases inside its wrapper of a saved module
    ("<head>.original_module.bias", "<head>.modules_to_save.bias"): copies of the base's bias and of "<head>.bias",
    which is what is read. The file-key prefixes of these copies, to be skipped."""
    prefix = adapter.config.file_format.file_prefix
    return tuple(f"{prefix}{path}.{part}." for path in adapter.paths(SiteRole.SAVED)
                 for part in ("original_module", "modules_to_save"))


def _load_tensors(adapter: AdapterView, weights_file: Path) -> None:
    skipped = _hf_wrapper_prefixes(adapter)
    with safe_open(str(weights_file), framework="pt") as handle:
        file_keys = [k for k in handle.keys() if not k.startswith(skipped)]  # noqa: SIM118  (not a dict)
        expected = adapter_tensors(adapter, expected=True)
        file_keys = [k for k in file_keys if not _is_base_copy(k, handle, adapter, expected)]
        stored = {_without_adapter_name(k, expected): k for k in file_keys}  # our key -> the file's
        file_keys = list(stored)
        for key in file_keys:
            if key not in expected:
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} has no place in this model"
                                       f"{_closest(key, expected)}; was the adapter made for another base model?")
        for key, target in expected.items():
            if key not in file_keys:
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} is missing from the file")
            shape = tuple(handle.get_slice(stored[key]).get_shape())
            if shape != tuple(target.shape):
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} has shape {shape}, but this model needs "
                                       f"{tuple(target.shape)}; the adapter was made for a base model of another size")
        tensors = {k: handle.get_tensor(stored[k]) for k in file_keys}
    prefix = adapter.config.file_format.file_prefix
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            path = _owner(key, adapter)
            by_site.setdefault(path, {})[key[len(prefix) + len(path) + 1:]] = value
    for path, entry in adapter.sites.items():
        entry.site.import_state(_on(by_site.get(path, {}), entry.site), entry.module)
    if adapter.model_adapter is not None:
        own = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
        adapter.model_adapter.import_state(_on(own, adapter.model_adapter), adapter.base_model)


def _without_adapter_name(key: str, expected: dict[str, torch.Tensor]) -> str:
    """A key as a plain state_dict export writes it, with the adapter's name after the tensor's name
    ("...q_proj.lora_A.default.weight"), mapped to the file key without it, as Hugging Face PEFT reads it."""
    if key in expected:
        return key
    parts = key.split(".")
    for i in range(1, len(parts)):
        if parts[i - 1].startswith(("lora_", "ia3_", "vera_")):
            candidate = ".".join(parts[:i] + parts[i + 1:])
            if candidate in expected:
                return candidate
    return key


def _is_base_copy(key: str, handle: Any, adapter: AdapterView, expected: dict[str, torch.Tensor]) -> bool:
    """Whether `key` is Hugging Face PEFT's copy of an adapted embedding's or output head's own weight
    (save_embedding_layers: "<path>.base_layer.weight"). A copy equal to the model's weight is skipped; one that
    differs means the adapter was trained on a changed base (e.g. a resized vocabulary), which is refused."""
    suffix = ".base_layer.weight"
    if key in expected or not key.endswith(suffix):
        return False
    path = key[len(adapter.config.file_format.file_prefix):-len(suffix)]
    entry = adapter.sites.get(path)
    if entry is None or entry.role is not SiteRole.METHOD:
        return False
    weight = entry.module.weight
    saved = handle.get_tensor(key)
    if saved.shape == weight.shape and torch.allclose(saved.to(weight), weight.detach(), rtol=0, atol=1e-6):
        return True
    raise AdapterLoadError(f"{WEIGHTS_NAME}: {key!r} holds a copy of {path!r}'s own weight that differs from this "
                           f"model's ({tuple(saved.shape)} against {tuple(weight.shape)}): the adapter was trained "
                           "on a changed base (e.g. added tokens). Load that base model (resize its embeddings and "
                           "load its weights), then the adapter")


def _owner(key: str, adapter: AdapterView) -> str:
    """The longest adapted module path that prefixes a file key."""
    body = key[len(adapter.config.file_format.file_prefix):]
    return max((p for p in adapter.sites if body.startswith(p + ".")), key=len, default="")


def _on(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    ref = next(module.parameters(), None)
    if ref is None:
        return state
    return {k: v.to(device=ref.device, dtype=ref.dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}


def _closest(key: str, expected: dict[str, torch.Tensor]) -> str:
    close = difflib.get_close_matches(key, list(expected), n=1, cutoff=0.6)
    return f" (closest expected: {close[0]!r})" if close else ""
