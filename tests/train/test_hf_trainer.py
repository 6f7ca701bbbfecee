"""transformers' Trainer on a peftlab model with tied embeddings: checkpoints are adapter folders (no frozen base),
and resuming from one reaches the same adapter as training straight through."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

import peftlab
from peftlab.train.hf_trainer import AdapterTrainer


class Sentences(torch.utils.data.Dataset):
    """Sixteen random 12-token sequences, labels = inputs (causal LM)."""

    def __init__(self) -> None:
        self.ids = torch.randint(2, 100, (16, 12), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tied_llama() -> torch.nn.Module:
    """A 2-layer Llama whose output head shares the input embedding's weight (as SmolLM2's does)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _trainer(out: Path, steps: int) -> AdapterTrainer:
    from transformers import TrainingArguments

    model = peftlab.adapt(tied_llama(), peftlab.LoRA(r=4, targets=["q_proj", "v_proj"], dropout=0.1))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=steps, learning_rate=1e-2,
                             save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, seed=3,
                             logging_steps=1, disable_tqdm=True)
    return AdapterTrainer(model=model, args=args, train_dataset=Sentences())


def test_trainer_checkpoints_are_adapter_folders_and_resume_exactly(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / "straight", steps=4)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth"} <= files
    assert "model.safetensors" not in files  # the frozen base is not written
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert all("lora_" in key for key in saved) and len(saved) == 8  # 2 layers x (q, v) x (A, B)
    reloaded = peftlab.load(tied_llama(), checkpoint)  # a checkpoint is an adapter folder
    assert reloaded.adapters == ["default"]

    resumed = _trainer(tmp_path / "resumed", steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    final = {k: v for k, v in straight.model.named_parameters() if v.requires_grad}
    for name, value in resumed.model.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(value, final[name], atol=1e-6, rtol=0)
    moved = dict(reloaded.named_parameters())
    assert any(not torch.equal(moved[name], final[name]) for name in final)  # steps 3-4 did change the adapter
