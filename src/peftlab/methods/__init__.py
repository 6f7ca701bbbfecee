"""Built-in methods. Importing this package registers each one; a new method is one new file imported here."""

from peftlab.methods.lora import LoRA
from peftlab.methods.dora import DoRA
from peftlab.methods.bitfit import BitFit
from peftlab.methods.full import FullFineTuning
from peftlab.methods.ia3 import IA3
from peftlab.methods.adapter import Adapter
from peftlab.methods.sparse import SparseFT
from peftlab.methods.prompt import PromptTuning
from peftlab.methods.prefix import PrefixTuning
from peftlab.methods.loreft import LoReFT

__all__ = ["LoRA", "DoRA", "BitFit", "FullFineTuning", "IA3", "Adapter", "SparseFT",
           "PromptTuning", "PrefixTuning", "LoReFT"]
