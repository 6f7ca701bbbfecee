"""peftlab: parameter-efficient fine-tuning methods on any PyTorch model, behind one reference architecture.

    model = peftlab.adapt(base, peftlab.LoRA(r=8, alpha=16, targets=["query", "value"]))
    model.save("out/adapter"); model = peftlab.load(base, "out/adapter")
"""

# ruff: noqa: I001, RUF022 (the import order is deliberate: see the comment below)
from peftlab.core.config import MethodConfig
from peftlab.core.model import AdaptedModel, adapt, load
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterCombineError, AdapterFileWarning, AdapterLoadError, AdapterSaveError
from peftlab.errors import AdapterStateError
from peftlab.errors import ConfigError, PeftlabError, TargetError
from peftlab.methods import BitFit, DoRA, FullFineTuning, LoRA
from peftlab.methods import IA3, Adapter, SparseFT
from peftlab.methods import LoReFT, PrefixTuning, PromptTuning

# After the methods package: `peftlab.methods` is the function that lists them, not the subpackage.
from peftlab.core.registry import config_for, get_method, methods, register

__version__ = "0.1.0"

__all__ = [
    "AdaptedModel", "Adapter", "AdapterCombineError", "AdapterFileWarning", "AdapterLoadError", "AdapterSaveError",
    "AdapterStateError",
    "AttachKind", "BitFit",
    "ConfigError", "DoRA", "FullFineTuning", "IA3", "LoRA", "MethodCard", "MethodConfig", "PeftlabError", "SparseFT",
    "TargetError", "adapt", "config_for", "get_method", "load", "methods", "register",
    "LoReFT", "PrefixTuning", "PromptTuning",
]
