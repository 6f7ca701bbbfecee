"""Reading and writing adapter files (Hugging Face PEFT layout, safetensors + JSON only)."""
