"""The two libraries behind one interface: attach a method, load a saved adapter, switch adapters.

Hugging Face PEFT is used only through its public API (`get_peft_model`, `PeftModel.from_pretrained`,
`load_adapter`, `set_adapter`, `merge_adapter`); peftlab only through its documented API (docs/api.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.configs import MethodSpec
from benchmarks.models import ModelPreset

if TYPE_CHECKING:
    from torch import nn

LIBRARIES = ("hf", "peftlab")


class Skip(Exception):
    """The configuration cannot be measured with this library (for example, peftlab lacks the method)."""


def peftlab_config(spec: MethodSpec, preset: ModelPreset) -> Any:
    """peftlab's config for `spec`; Skip when no listed method id is registered."""
    import peftlab

    available = peftlab.method_ids()
    method_id = next((m for m in spec.peftlab_ids if m in available), None)
    if method_id is None:
        raise Skip(f"peftlab has no {'/'.join(spec.peftlab_ids)} yet")
    return peftlab.config_for(method_id, **spec.peftlab_fields(preset))


def attach(library: str, spec: MethodSpec, preset: ModelPreset, model: nn.Module) -> nn.Module:
    """`model` with the method of `spec` attached (trainable adapter, frozen base) by `library`."""
    if library == "hf":
        from peft import get_peft_model

        return get_peft_model(model, spec.hf_config(preset))
    if library == "peftlab":
        import peftlab

        return peftlab.adapt(model, peftlab_config(spec, preset))
    raise ValueError(f"unknown library {library!r}; expected one of {LIBRARIES}")


def bypassed(library: str, model: nn.Module) -> tuple[Callable[..., Any], Callable[[], AbstractContextManager]]:
    """(the plain model's forward, a context in which the method is off) for an adapted model: the floor of the
    same weights. "torch" (full fine-tuning) has no method: the model itself, and a context that does nothing."""
    if library == "hf":
        # Prompt learning lives in PeftModel.forward, so the base model alone is already the floor; HF PEFT 0.21's
        # disable_adapter() also fails on prompt learning for sequence classification (UnboundLocalError).
        prompt_learning = model.active_peft_config.is_prompt_learning
        return model.get_base_model(), contextlib.nullcontext if prompt_learning else model.disable_adapter
    if library == "peftlab":
        return model.base_model, model.disable_adapters
    return model, contextlib.nullcontext


def load(library: str, model: nn.Module, path: Path) -> nn.Module:
    """An adapted model from the adapter saved at `path` (adapter name "default")."""
    if library == "hf":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(path))
    import peftlab

    return peftlab.load(model, path)


def load_second(library: str, model: nn.Module, path: Path, name: str) -> None:
    """Load another saved adapter into an adapted model under `name` (not activated)."""
    if library == "hf":
        model.load_adapter(str(path), adapter_name=name)
    else:
        model.load_adapter(path, adapter_name=name)


def save(model: nn.Module, path: Path) -> None:
    """Save the adapted model's adapter(s) to `path`."""
    if hasattr(model, "save"):  # peftlab
        model.save(path)
    else:
        model.save_pretrained(str(path))
