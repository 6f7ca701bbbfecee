"""Task plumbing on real data and tokenizers (no training): batches, masks, image tensors, task lookup."""

from __future__ import annotations

import pytest
import torch

from peftlab.study.data.examples import PromptCompletion
from peftlab.study.errors import StudyError
from peftlab.study.tasks import build_task
from peftlab.study.tasks.base import TaskSpec, endless_batches
from peftlab.study.tasks.causal_lm import IGNORE, normalise


def test_sentiment_batches_are_padded_tokens_with_labels() -> None:
    task = build_task(TaskSpec("sentiment", model="tiny-bert", max_length=16))
    splits = task.splits()
    assert (len(splits.test), len(splits.validation)) == (1000, 200)
    batch = next(endless_batches(splits.train, 4, torch.Generator().manual_seed(0), task.collate))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16
    assert batch["labels"].tolist() and set(batch["labels"].tolist()) <= {0, 1, 2}
    assert task.fields_for("lora") == {} and task.describe()["input_size"] == "max length 16"


def test_image_batches_are_three_channel_normalised_squares() -> None:
    task = build_task(TaskSpec("image", image_size=32, test_size=100, validation_size=50))
    batch = task.collate(task.splits().train[:3])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert -1.0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1.0
    assert task.fields_for("lora")["modules_to_save"] == ("_fc",) and "targets" in task.fields_for("lora")
    assert "targets" not in task.fields_for("bitfit")
    assert task.describe()["input_size"] == "32x32 px"  # the report's header says this, not a token length


@pytest.mark.parametrize("method_id", ["lora", "dora"])
def test_image_task_adapts_efficientnets_pointwise_convolutions(method_id: str) -> None:
    """LoRA and DoRA take the task's conv targets on EfficientNet-Lite0 (its TensorFlow-style padding subclasses) and
    start as the identity: the adapted model's output equals the base model's."""
    import peftlab

    task = build_task(TaskSpec("image", image_size=32, test_size=100, validation_size=50))
    base = task.build_model().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(x)
    model = peftlab.adapt(base, peftlab.config_for(method_id, **task.fields_for(method_id))).eval()
    kinds = model.site_kinds("default")
    convs = [p for p, kind in kinds.items() if kind == "method"]
    assert len(convs) == 32 and all(p.endswith(("_expand_conv", "_project_conv", "_conv_head")) for p in convs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_causal_lm_batches_mask_the_prompt() -> None:
    task = build_task(TaskSpec("arithmetic", model="tiny-llama", max_length=32))
    example = PromptCompletion("12+34=", "46")
    _, labels = task.encode(example)
    completion = task.tokenizer("46", add_special_tokens=False)["input_ids"] + [task.tokenizer.eos_token_id]
    assert labels[-len(completion):] == completion and set(labels[:-len(completion)]) == {IGNORE}
    batch = task.collate([example, PromptCompletion("1+1=", "2")])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][1].sum()) < batch["input_ids"].shape[1]  # right padding
    assert normalise(" Paris. ") == normalise("paris")


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(StudyError, match="sentiment, topic, image, dialogue, arithmetic"):
        build_task(TaskSpec("glue"))


@pytest.mark.parametrize("method_id", ["full", "bitfit", "lora"])
def test_image_training_keeps_the_batch_norm_statistics(method_id: str) -> None:
    """Every method trains the CNN with its ImageNet batch-norm statistics, also full fine-tuning, where the layers'
    own scale and shift train (BitFit's bias deltas and LoRA sit beside a frozen layer). At lr 1e-4, full fine-tuning
    tested at 16% on digits with the statistics re-estimated from batches of 16, and at 95.5% with them kept."""
    import peftlab

    task = build_task(TaskSpec("image", image_size=32, test_size=100, validation_size=50))
    model = peftlab.adapt(task.build_model(), peftlab.config_for(method_id, **task.fields_for(method_id)))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    trained = any(p.requires_grad for m in norms for p in m.parameters())
    assert norms and trained == (method_id == "full")
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    task.train_mode(model)
    assert model.training and not any(m.training for m in norms)
    task.loss(model, task.collate(task.splits().train[:4])).backward()
    for m, (mean, var) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
