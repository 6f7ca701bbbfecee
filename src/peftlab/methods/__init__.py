"""Built-in methods. Importing this package registers each one; a new method is one new file imported here."""

from peftlab.methods.lora import LoRA
from peftlab.methods.dora import DoRA
from peftlab.methods.bitfit import BitFit
from peftlab.methods.full import FullFineTuning

__all__ = ["LoRA", "DoRA", "BitFit", "FullFineTuning"]
