"""Built-in methods, one file each. `BUILTIN` is the registry's list, in the order `peftlab methods` shows them:
adding a method is its file plus one line here (docs/adding-a-method.md)."""

from peftlab.methods.adalink import AdaLink
from peftlab.methods.adapter import Adapter
from peftlab.methods.bitfit import BitFit
from peftlab.methods.dora import DoRA
from peftlab.methods.full import FullFineTuning
from peftlab.methods.ia3 import IA3
from peftlab.methods.kasa import KaSA
from peftlab.methods.lora import LoRA
from peftlab.methods.loreft import LoReFT
from peftlab.methods.prefix import PrefixTuning
from peftlab.methods.prompt import PromptTuning
from peftlab.methods.sparse import SparseFT
from peftlab.methods.vera import VeRA

BUILTIN = (
    LoRA,
    DoRA,
    BitFit,
    FullFineTuning,
    IA3,
    Adapter,
    SparseFT,
    PromptTuning,
    PrefixTuning,
    LoReFT,
    VeRA,
    KaSA,
    AdaLink,
)

__all__ = ["BUILTIN", "IA3", "AdaLink", "Adapter", "BitFit", "DoRA", "FullFineTuning", "KaSA", "LoRA", "LoReFT",
           "PrefixTuning", "PromptTuning", "SparseFT", "VeRA"]
