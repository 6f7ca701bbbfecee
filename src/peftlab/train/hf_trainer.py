"""transformers' Trainer with checkpoints that hold the adapters, not the frozen base.

`Trainer._save` writes a model that is neither a transformers `PreTrainedModel` nor an HF PEFT `PeftModel` as its whole
`state_dict()`: every checkpoint holds the frozen base, and a base with tied embeddings (SmolLM2, GPT-2) makes
safetensors refuse the first checkpoint ("Some tensors share memory"). Resuming reads that state dict back into the
model with `load_state_dict`. These are the only two places Trainer touches an unknown model's weights, so the mixin
overrides exactly them (and the best-model reload): a checkpoint folder is the adapter folder `model.save` writes
(Hugging Face PEFT's layout: `peftlab.load` and `PeftModel.from_pretrained` read it) next to Trainer's own optimizer,
scheduler, RNG and trainer-state files, and resuming loads the adapter tensors back into the model's adapters.

    trainer = AdapterTrainer(model=adapted, args=args, ...)          # instead of transformers.Trainer
    class MySFTTrainer(AdapterCheckpoints, trl.SFTTrainer): ...      # any Trainer subclass: the mixin first

Trainer itself reads its optimizer, scheduler and RNG files with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer

from peftlab.core.model import AdaptedModel
from peftlab.io.adapter_folder import CONFIG_NAME
from peftlab.train.checkpoint import restore_adapters
from peftlab.train.distributed import unwrapped


def adapted_model(model: nn.Module | None) -> AdaptedModel | None:
    """The AdaptedModel inside a DDP wrapper or a compiled module, or None for any other model."""
    if model is None:
        return None
    model = getattr(unwrapped(model), "_orig_mod", unwrapped(model))
    return model if isinstance(model, AdaptedModel) else None


class AdapterCheckpoints:
    """Mixin for `transformers.Trainer` and its subclasses (put it first): an AdaptedModel's checkpoints hold its
    adapters (a few MB), not the frozen base, and resume exactly. Other models are saved as Trainer saves them."""

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        model = adapted_model(self.model)
        if model is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        model.save(folder)
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        adapted = adapted_model(model if model is not None else self.model)
        folder = Path(resume_from_checkpoint)
        if adapted is None or not (folder / CONFIG_NAME).is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        restore_adapters(adapted, folder)
        return None

    def _load_best_model(self) -> None:
        adapted = adapted_model(self.model)
        best = self.state.best_model_checkpoint
        if adapted is None or best is None or not (Path(best) / CONFIG_NAME).is_file():
            return super()._load_best_model()
        restore_adapters(adapted, Path(best))
        return None


class AdapterTrainer(AdapterCheckpoints, Trainer):
    """`transformers.Trainer` whose checkpoints of a peftlab AdaptedModel hold the adapters (see the module doc)."""
