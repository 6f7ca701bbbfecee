"""File formats as objects: how one method's config and tensors are written to an adapter folder and read back.

An adapter folder holds adapter_config.json (the method's fields, Hugging Face PEFT's names where it has the
method) and adapter_model.safetensors (tensor keys "<file_prefix><module path>.<site key>" for tensors at a module,
bare keys for model-level ones). A `FileFormat` owns the first and the prefix of the second; sites own their keys.

Every registered method has one format (`MethodConfig.file_format`, defined beside the method). Formats sharing a
Hugging Face `peft_type` are variants (LoRA, DoRA and KaSA all write "LORA"): reading a file asks each format of
that type whether it `claims` the file's fields, and exactly one must. A method Hugging Face PEFT lacks gets
`NativeFormat`: Hugging Face PEFT's layout with the method id, upper-cased, as `peft_type`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftlab.core.sites import SiteRole

if TYPE_CHECKING:
    from peftlab.core.config import MethodConfig
    from peftlab.core.view import AdapterView

# Keys every adapter_config.json may carry that are about the file, not the method.
FILE_KEYS = ("peft_type", "peftlab_version", "base_model_name_or_path", "task_type", "revision", "inference_mode",
             "auto_mapping")


class FileFormat:
    """The adapter_config.json fields of one method (and their inverse), and where its tensors live in the file."""

    peft_type: str
    # Hugging Face PEFT wraps the model as "base_model.model."; its prompt-learning methods one level less deep.
    file_prefix: str = "base_model.model."

    def __init__(self, config_cls: type[MethodConfig]) -> None:
        self.config_cls = config_cls

    def claims(self, data: Mapping[str, Any]) -> bool:
        """Whether a file of this format's peft_type is this method's (variants tell themselves apart here)."""
        return True

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        """adapter_config.json fields for `adapter` (the io layer adds base_model_name_or_path and task_type)."""
        raise NotImplementedError(f"{type(self).__name__} must implement to_file()")

    def from_file(self, data: Mapping[str, Any]) -> MethodConfig:
        """The method config an adapter_config.json describes (raise ConfigError / AdapterLoadError on bad fields)."""
        raise NotImplementedError(f"{type(self).__name__} must implement from_file()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config_cls.__name__}, peft_type={self.peft_type!r})"


class NativeFormat(FileFormat):
    """peftlab's own layout: every config field under its own name, `peft_type` the method id upper-cased."""

    def __init__(self, config_cls: type[MethodConfig]) -> None:
        super().__init__(config_cls)
        self.peft_type = config_cls.card.id.upper()

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        data = adapter.config.to_dict()
        data.pop("method")
        return {"peft_type": self.peft_type, **data, "modules_to_save": adapter.paths(SiteRole.SAVED) or None}

    def from_file(self, data: Mapping[str, Any]) -> MethodConfig:
        fields = {k: v for k, v in data.items() if k not in FILE_KEYS}
        return self.config_cls.from_dict(fields)
