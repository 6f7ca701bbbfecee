"""Adapter folders in Hugging Face PEFT's layout: adapter_config.json + adapter_model.safetensors.

Tensor keys are "base_model.model.<module path>.<site key>" for tensors living at a module (lora_A.weight,
lora_magnitude_vector, a saved head's weight, ...; the prefix is the method's file format's `file_prefix`) and bare
names for model-level tensors (prompt_embeddings). What adapter_config.json holds is the method's file format's
business (io/formats.py).
Only JSON and safetensors are ever read. adapter_config.json is the one source of the config, for peftlab as for
Hugging Face PEFT. The weights file records which config its save wrote (adapter_commit): that confirms the JSON,
shows it was edited, or refuses files from two saves. It also keeps the config as the user gave it ("peftlab_config":
targets="all-linear" rather than the resolved module list), so that a config reads back exactly; that copy is used
only when the adapter built from it writes exactly the adapter_config.json on disk (see `load_adapter_into`).
This module maps configs and tensors to files and back; folder mechanics (atomic commit, locks, reading and checking
files) live beside it in io/.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from peftlab._version import __version__
from peftlab.core.config import REGISTERED, MethodConfig
from peftlab.core.model_inputs import hf_task_type
from peftlab.core.sites import SiteRole
from peftlab.core.targets import AUTO_SAVED_HEADS, candidate_modules, name_matches
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterLoadError, AdapterSaveError, ConfigError, PeftlabError, warn_caller
from peftlab.io.adapter_commit import AdapterFiles, ConfigSource, config_source, write_adapter_folders
from peftlab.io.adapter_folder import WEIGHTS_NAME, config_digest, find_adapter_files, read_config_json
from peftlab.io.tensor_checks import TensorHeader, check_kinds, check_sizes, describe_keys, non_finite, read_header

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel

SAVED_CONFIG_KEY = "peftlab_config"  # the config as the user gave it, in the weights file's metadata


def adapter_tensors(adapter: AdapterView, expected: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of one adapter under its file key (`expected`: the ones a load of it must supply)."""
    prefix = adapter.config.file_format.file_prefix
    tensors: dict[str, torch.Tensor] = {}
    for path, state in adapter.state(expected).items():
        for key, value in state.items():
            tensors[f"{prefix}{path}.{key}" if path else key] = value
    return tensors


def save_adapters(adapters: list[AdapterView], path: Path, allow_non_finite: bool = False,
                  tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write each adapter to its folder ("default": `path`, others: `path/<name>`), each folder as one unit
    (adapter_commit). Tensors holding NaN or infinity are refused before anything is written, unless
    `allow_non_finite` (then saved with a warning). `tensors`: by adapter name, as `adapter_tensors` gives them, when
    the caller already has them whole (FSDP gathers its shards)."""
    items = []
    for adapter in adapters:
        name = adapter.name
        source = tensors[name] if tensors is not None else adapter_tensors(adapter)
        tensors_out = {k: v.detach().to("cpu").contiguous().clone() for k, v in source.items()}
        bad = non_finite(tensors_out)
        if bad:
            message = (f"adapter {name!r} holds NaN or infinite values in {describe_keys(bad)} (did training "
                       "diverge?)")
            if not allow_non_finite:
                raise AdapterSaveError(f"{message}; nothing was saved. Fix the run (e.g. a lower learning rate), or "
                                       "pass allow_non_finite=True to save it anyway")
            warn_caller(f"{message}; saved as asked (allow_non_finite=True)")
        metadata = {"format": "pt", "peftlab_version": __version__,
                    SAVED_CONFIG_KEY: json.dumps(adapter.config.to_dict())}
        items.append(AdapterFiles(path if name == "default" else path / name, _file_config(adapter), tensors_out,
                                  metadata))
    write_adapter_folders(items)


def _file_config(adapter: AdapterView) -> dict[str, Any]:
    """adapter_config.json of one adapter."""
    own, base = _file_config_parts(adapter)
    return {**own, **base}


def _file_config_parts(adapter: AdapterView) -> tuple[dict[str, Any], dict[str, Any]]:
    """adapter_config.json in two parts: the method's fields (its file format's, for its resolved sites), and the
    entries describing the base model (its name and task type), which override the first."""
    own = adapter.config.file_format.to_file(adapter)
    hf_config = getattr(adapter.base_model, "config", None)
    base = {"base_model_name_or_path": getattr(hf_config, "_name_or_path", None)}
    if own.get("task_type") is None and hf_config is not None:
        base["task_type"] = _task_type(adapter.base_model, adapter.paths(SiteRole.SAVED))
    return own, base


def _task_type(base: torch.nn.Module, saved: list[str]) -> str | None:
    """The task_type that lets Hugging Face PEFT's AutoPeftModel* classes pick the model class. HF PEFT's
    classification tasks expect the head's tensors in the file, so without a saved head the field stays empty."""
    task = hf_task_type(base)
    has_head = any(path.split(".")[-1] in AUTO_SAVED_HEADS for path in saved)
    return None if task in ("SEQ_CLS", "TOKEN_CLS") and not has_head else task


@dataclasses.dataclass(frozen=True)
class AdapterFolder:
    """What a load reads from a folder before it builds anything: the config adapter_config.json describes, where
    that file stands against the weights file's save record, the copy of the config that save kept (when the record
    names this very adapter_config.json), and the weights file's header."""

    config_file: Path
    weights_file: Path
    data: dict[str, Any]
    config: MethodConfig
    source: ConfigSource
    saved_config: MethodConfig | None
    header: TensorHeader


def read_adapter_folder(folder: Path) -> AdapterFolder:
    """Read and check an adapter folder (ours or Hugging Face PEFT's) without loading any tensor data."""
    config_file, weights_file = find_adapter_files(folder)
    data = read_config_json(config_file)
    header = read_header(weights_file)
    source = config_source(data, header.metadata, config_file, weights_file)
    config = _config_from_file(data, config_file)
    saved = _saved_config(header, type(config)) if source is ConfigSource.CONFIRMED else None
    return AdapterFolder(config_file, weights_file, data, config, source, saved, header)


def read_adapter_config(folder: Path) -> MethodConfig:
    """The method config an adapter folder describes (ours or Hugging Face PEFT's), from adapter_config.json."""
    return read_adapter_folder(folder).config


def _config_from_file(data: dict[str, Any], config_file: Path) -> MethodConfig:
    """The method config that adapter_config.json describes (its peft_type, and variant fields, pick the method)."""
    file_format = _format_for(data, config_file)
    try:
        config = file_format.from_file(data)
    except AdapterLoadError as err:
        raise AdapterLoadError(f"{config_file}: {err}") from None
    except (ConfigError, TypeError, ValueError, AttributeError, KeyError) as err:  # a field of the wrong type or form
        raise AdapterLoadError(f"{config_file}: {_field_error(err)}") from None
    if config.modules_to_save is None and not data.get("modules_to_save"):
        config = config.replace(modules_to_save=())  # the file lists the modules it saved in full: none
    return config


def _format_for(data: dict[str, Any], config_file: Path) -> Any:
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


def _field_error(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"the field {err} is missing"
    if isinstance(err, (ConfigError, ValueError)):
        return str(err)
    return f"a field has the wrong type ({err})"


def _saved_config(header: TensorHeader, config_cls: type[MethodConfig]) -> MethodConfig | None:
    """The config as the user gave it (targets="all-linear", ...), which the save kept in the weights file's
    metadata; None when absent, unreadable or of another method than adapter_config.json names."""
    text = header.metadata.get(SAVED_CONFIG_KEY)
    try:
        saved = MethodConfig.from_dict(json.loads(text)) if text else None
    except (PeftlabError, ValueError, TypeError, AttributeError):
        return None
    return saved if type(saved) is config_cls else None


def load_adapter_into(model: AdaptedModel, folder: Path, name: str, allow_non_float: bool = False,
                      allow_non_finite: bool = False) -> None:
    """Add the adapter stored in `folder` to `model` under `name`; on any mismatch nothing is left attached.

    The config is the one adapter_config.json describes. The copy the save kept in the weights file (the config as
    the user gave it) is used instead only when adapter_config.json is the one that save wrote and the adapter built
    from the copy would write exactly this adapter_config.json again; otherwise it is ignored, with a warning.
    Before building anything, the sizes the config asks for are checked against the file's tensor shapes. A file
    tensor of another kind (integer or bool where the adapter holds floats) or holding NaN or infinity is refused
    unless `allow_non_float` / `allow_non_finite` (then loaded, cast to float, with a warning)."""
    contents = read_adapter_folder(folder)
    if contents.source is ConfigSource.EDITED:
        warn_caller(f"{contents.config_file} was edited after peftlab saved this folder; it is read as it stands, "
                    "as Hugging Face PEFT reads it")
    if contents.saved_config is not None and _built_from_copy(model, name, contents):
        _fill(model, name, contents, allow_non_float, allow_non_finite)
        return
    _build(model, name, contents, _present_modules_to_save(contents.config, model.get_base_model()),
           contents.config_file)
    _fill(model, name, contents, allow_non_float, allow_non_finite)
    if contents.saved_config is not None:
        warn_caller(f"the config copy in {contents.weights_file} disagrees with {contents.config_file}; the copy was "
                    "ignored and adapter_config.json read")


def _built_from_copy(model: AdaptedModel, name: str, contents: AdapterFolder) -> bool:
    """Add the adapter from the config copy in the weights file; True when it writes exactly the adapter_config.json
    on disk again, else nothing is left added."""
    try:
        _build(model, name, contents, contents.saved_config, contents.weights_file)
    except AdapterLoadError:
        return False
    if _writes_same_config(model, name, contents.data):
        return True
    model.delete_adapter(name)
    return False


def _build(model: AdaptedModel, name: str, contents: AdapterFolder, config: MethodConfig, source: Path) -> None:
    """Check the sizes `config` (read from `source`) asks for against the file's header, then add its sites."""
    try:
        check_sizes(config, model.get_base_model(), contents.header, source, contents.weights_file)
        model.add_adapter(name, config)
    except PeftlabError as err:
        if isinstance(err, AdapterLoadError):
            raise
        raise AdapterLoadError(f"the adapter in {contents.config_file.parent} does not fit this model: {err}") from None


def _fill(model: AdaptedModel, name: str, contents: AdapterFolder, allow_non_float: bool,
          allow_non_finite: bool) -> None:
    try:
        load_tensors(model.adapter(name), contents, allow_non_float, allow_non_finite)
    except BaseException:
        model.delete_adapter(name)
        raise


def load_adapter_weights(model: AdaptedModel, name: str, folder: Path) -> None:
    """Overwrite the tensors of the existing adapter `name` with those saved in `folder` (a checkpoint of it);
    AdapterLoadError when the folder holds another method or configuration."""
    contents = read_adapter_folder(folder)
    config = contents.saved_config or contents.config
    if config != model.configs[name]:
        raise AdapterLoadError(f"{folder} holds a {type(config).card.name} adapter configured as {config.to_dict()}, "
                               f"not adapter {name!r} of this model ({model.configs[name].to_dict()})")
    load_tensors(model.adapter(name), contents)


def _writes_same_config(model: AdaptedModel, name: str, on_disk: dict[str, Any]) -> bool:
    """Whether the adapter `name` would write the method fields of `on_disk` (its adapter_config.json) again; the
    entries describing the base model are left out (a base that does not fit fails on the tensors' shapes)."""
    own, base = _file_config_parts(model.adapter(name))
    return config_digest({k: v for k, v in own.items() if k not in base}) == \
        config_digest({k: v for k, v in on_disk.items() if k not in base})


def _present_modules_to_save(config: MethodConfig, model: torch.nn.Module) -> MethodConfig:
    """Hugging Face PEFT ignores modules_to_save entries that name no module of the model (its SEQ_CLS task always
    writes ["classifier", "score"]); files are read the same way. Saved tensors are still checked one by one."""
    wanted = config.modules_to_save
    if not wanted:
        return config
    names = [n for n, _ in candidate_modules(model)]
    present = tuple(key for key in wanted if any(name_matches(n, (key,)) for n in names))
    return config if present == wanted else config.replace(modules_to_save=present)


def _hf_wrapper_prefixes(adapter: AdapterView) -> tuple[str, ...]:
    """Hugging Face PEFT's bias="all" also writes the biases inside its wrapper of a saved module
    ("<head>.original_module.bias", "<head>.modules_to_save.bias"): copies of the base's bias and of "<head>.bias",
    which is what is read. The file-key prefixes of these copies, to be skipped."""
    prefix = adapter.config.file_format.file_prefix
    return tuple(f"{prefix}{path}.{part}." for path in adapter.paths(SiteRole.SAVED)
                 for part in ("original_module", "modules_to_save"))


def load_tensors(adapter: AdapterView, contents: AdapterFolder, allow_non_float: bool = False,
                 allow_non_finite: bool = False) -> None:
    """Fill the sites of `adapter` with the tensors of the folder `contents` describes (names, shapes, kinds and
    values checked first)."""
    weights_file, header = contents.weights_file, contents.header
    skipped = _hf_wrapper_prefixes(adapter)
    with safe_open(str(weights_file), framework="pt") as handle:
        file_keys = [k for k in header.shapes if not k.startswith(skipped)]
        expected = adapter_tensors(adapter, expected=True)
        file_keys = [k for k in file_keys if not _is_base_copy(k, handle, adapter, expected)]
        stored = {_without_adapter_name(k, expected): k for k in file_keys}  # our key -> the file's
        for key in stored:
            if key not in expected:
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} has no place in this model"
                                       f"{_closest(key, expected)}; was the adapter made for another base model?")
        for key, target in expected.items():
            if key not in stored:
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} is missing from the file")
            shape = header.shapes[stored[key]]
            if shape != tuple(target.shape):
                raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} has shape {shape}, but this model needs "
                                       f"{tuple(target.shape)}; the adapter was made for a base model of another size")
        cast = check_kinds(expected, stored, header, weights_file, allow_non_float)
        tensors = {k: handle.get_tensor(stored[k]) for k in stored}
    if cast:
        warn_caller(f"{weights_file.name}: {describe_keys(cast)} hold integer or bool values where the adapter "
                      "holds floats; cast to float as asked (allow_non_float=True)")
        tensors.update({k: tensors[k].to(expected[k].dtype) for k in cast})
    bad = non_finite(tensors)
    if bad:
        message = f"{weights_file.name}: {describe_keys(bad)} hold NaN or infinite values"
        if not allow_non_finite:
            raise AdapterLoadError(f"{message} (a diverged training run?); pass allow_non_finite=True to load them "
                                   "anyway, with a warning")
        warn_caller(f"{message}; loaded as asked (allow_non_finite=True)")
    prefix = adapter.config.file_format.file_prefix
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        path = _owner(key, adapter)
        if path is not None:
            by_site.setdefault(path, {})[key[len(prefix) + len(path) + 1:]] = value
    for path, entry in adapter.sites.items():
        entry.site.import_state(_on(by_site.get(path, {}), entry.site), entry.module)
    if adapter.model_adapter is not None:
        own = {k: v for k, v in tensors.items() if _owner(k, adapter) is None}
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


def _owner(key: str, adapter: AdapterView) -> str | None:
    """The longest adapted module path that a file key names (its site's), or None (a model adapter's key)."""
    prefix = adapter.config.file_format.file_prefix
    if not key.startswith(prefix):
        return None
    body = key[len(prefix):]
    return max((p for p in adapter.sites if body.startswith(p + ".")), key=len, default=None)


def _on(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    ref = next(module.parameters(), None)
    if ref is None:
        return state
    return {k: v.to(device=ref.device, dtype=ref.dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}


def _closest(key: str, expected: dict[str, torch.Tensor]) -> str:
    close = difflib.get_close_matches(key, list(expected), n=1, cutoff=0.6)
    return f" (closest expected: {close[0]!r})" if close else ""
