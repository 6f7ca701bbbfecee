"""transformers' Trainer trains an AdaptedModel like any model: columns kept, labels found, only adapters change."""

from __future__ import annotations

from pathlib import Path

import torch

import peftlab
from tests.tiny_models import tiny_bert


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, 100, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 3).long()  # learnable from the first token

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_trains_only_the_adapter(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    base = tiny_bert()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = peftlab.adapt(base, peftlab.LoRA(r=4, targets=["query", "value"]))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=6,
                             learning_rate=1e-2, report_to=[], logging_steps=1, save_strategy="no",
                             use_cpu=True, eval_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(48), eval_dataset=TokenDataset(16))
    result = trainer.train()
    assert result.training_loss > 0
    assert "eval_loss" in trainer.evaluate()  # labels were found through the base forward's signature
    sites = model.site_adapters("default")
    assert all(site.lora_B.weight.abs().sum() > 0 for path, (site, _) in sites.items() if path != "classifier")
    base_now = model.base_model.state_dict()
    for key, value in frozen.items():
        wrapped = key.replace(".query.", ".query.base_layer.").replace(".value.", ".value.base_layer.")
        wrapped = wrapped.replace("classifier.", "classifier.base_layer.")
        torch.testing.assert_close(base_now[wrapped], value, atol=0, rtol=0)
