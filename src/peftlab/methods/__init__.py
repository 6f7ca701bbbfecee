"""Built-in methods. Importing this package registers each one; a new method is one new file imported here."""

from peftlab.methods.adapter import Adapter
from peftlab.methods.bitfit import BitFit
from peftlab.methods.dora import DoRA
from peftlab.methods.full import FullFineTuning
from peftlab.methods.ia3 import IA3
from peftlab.methods.lora import LoRA
from peftlab.methods.loreft import LoReFT
from peftlab.methods.prefix import PrefixTuning
from peftlab.methods.prompt import PromptTuning
from peftlab.methods.sparse import SparseFT

__all__ = ["IA3", "Adapter", "BitFit", "DoRA", "FullFineTuning", "LoRA", "LoReFT", "PrefixTuning", "PromptTuning",
           "SparseFT"]
