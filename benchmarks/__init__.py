"""Side-by-side benchmarks: peftlab against Hugging Face PEFT and against the physical floor.

`python -m benchmarks.run` plans the jobs, runs each in its own subprocess (`benchmarks.worker`) and writes the
Markdown report; `python -m benchmarks.profile_lora` breaks one LoRA training step down by operator and by phase.
"""
