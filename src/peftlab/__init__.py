"""peftlab: parameter-efficient fine-tuning methods on any PyTorch model, behind one reference architecture.

    model = peftlab.adapt(base, peftlab.LoRA(r=8, alpha=16, targets=["query", "value"]))
    model.save("out/adapter"); model = peftlab.load(base, "out/adapter")
"""

from peftlab._version import __version__
from peftlab.core.config import MethodConfig
from peftlab.core.model import AdaptedModel, adapt, load
from peftlab.core.registry import config_for, get_method, method_ids, register, register_all, unregister
from peftlab.core.sites import SiteRole
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import (
    AdapterCombineError,
    AdapterFileWarning,
    AdapterLoadError,
    AdapterSaveError,
    AdapterStateError,
    ConfigError,
    ContractError,
    PeftlabError,
    TargetError,
)
from peftlab.methods import (
    BUILTIN,
    IA3,
    AdaLink,
    Adapter,
    BitFit,
    DoRA,
    FullFineTuning,
    KaSA,
    LoRA,
    LoReFT,
    PrefixTuning,
    PromptTuning,
    SparseFT,
    VeRA,
)
from peftlab.serve import AdapterPool

register_all(BUILTIN)

__all__ = [
    "IA3",
    "AdaLink",
    "AdaptedModel",
    "Adapter",
    "AdapterCombineError",
    "AdapterFileWarning",
    "AdapterLoadError",
    "AdapterPool",
    "AdapterSaveError",
    "AdapterStateError",
    "AdapterView",
    "AttachKind",
    "BitFit",
    "ConfigError",
    "ContractError",
    "DoRA",
    "FullFineTuning",
    "KaSA",
    "LoRA",
    "LoReFT",
    "MethodCard",
    "MethodConfig",
    "PeftlabError",
    "PrefixTuning",
    "PromptTuning",
    "SiteRole",
    "SparseFT",
    "TargetError",
    "VeRA",
    "__version__",
    "adapt",
    "config_for",
    "get_method",
    "load",
    "method_ids",
    "register",
    "unregister",
]
