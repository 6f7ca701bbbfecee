"""`peftlab train` end to end, in process, on tiny models built from configs with real tokenizers: classification
and language data (prompt/completion and chat), validation, metrics and TensorBoard files, every registered method with
its own learning rate, accumulation, autocast, gradient checkpointing, merging, and stopping on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from peftlab.study.models import load_causal_lm, load_text_classifier
from peftlab.train.command import run_train
from peftlab.train.config import TrainConfigError
from peftlab.train.run_log import read_metrics
from tests.train.conftest import adapter_difference, options_for, subprocess_env, write_jsonl

LM = ["--model", "tiny-llama", "--max-length", "32", "--batch-size", "4", "--no-progress", "--device", "cpu"]


def test_classification_with_a_validation_file_logs_metrics_and_tensorboard(tmp_path: Path,
                                                                            labelled_file: Path) -> None:
    rows = [json.loads(line) for line in labelled_file.read_text().splitlines()]
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[:20])
    outcome = run_train(options_for("--data", str(labelled_file), "--validation", str(validation), "--model",
                                    "tiny-bert", "--steps", "6", "--eval-every", "3", "--batch-size", "8",
                                    "--no-progress", "--out", str(tmp_path / "out")))
    records = read_metrics(tmp_path / "out")
    assert [r["step"] for r in records if "eval" in r] == [3, 6]
    assert set(records[-1]["eval"]) == {"accuracy", "macro_f1", "loss"}
    assert [r["step"] for r in records if "loss" in r and "eval" not in r] == list(range(1, 7))
    events = list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert outcome.result.curve[-1]["step"] == 6
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == ["classifier"]


def test_chat_messages_train_on_the_assistant_turns_only(tmp_path: Path) -> None:
    from peftlab.study.data.examples import Conversation
    from peftlab.train.data import build_data

    chats = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                           {"role": "assistant", "content": str(a + b)},
                           {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome"}]}
             for a in range(5) for b in range(4)]
    data_file = write_jsonl(tmp_path / "chats.jsonl", chats)
    options = options_for("--data", str(data_file), *LM, "--max-length", "96", "--steps", "3",
                          "--out", str(tmp_path / "out"))  # SmolLM2's template adds a 30-token system turn
    data = build_data(options)
    assert isinstance(data.train[0], Conversation) and len(data.validation) == 2
    ids, labels = data.task.encode(data.train[0])
    trained = data.task.tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    answer = data.train[0].messages[1][1]
    assert trained == f"{answer}<|im_end|>\nYou are welcome<|im_end|>\n"
    outcome = run_train(options)
    assert len(outcome.result.losses) == 3 and (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("method", peftlab.method_ids())
def test_every_registered_method_trains_with_its_own_learning_rate(tmp_path: Path, labelled_file: Path,
                                                                   method: str) -> None:
    out = tmp_path / method
    outcome = run_train(options_for("--data", str(labelled_file), "--model", "tiny-bert", "--method", method,
                                    "--steps", "2", "--batch-size", "4", "--save-every", "0", "--validation", "0",
                                    "--no-progress", "--out", str(out)))
    assert outcome.result.losses and all(map(torch.isfinite, torch.tensor(outcome.result.losses)))
    assert f"\nlr: {peftlab.get_method(method).study_lr}\n" in (out / "train.yaml").read_text()
    reloaded = peftlab.load(load_text_classifier("tiny-bert", 2), out / "adapter")  # the saved folder loads back
    assert reloaded.configs["default"].card.id == method


def test_accumulation_and_gradient_checkpointing_give_the_same_adapter(tmp_path: Path, sums_file: Path) -> None:
    common = ["--data", str(sums_file), *LM, "--method", "lora:r=4", "--steps", "4", "--batch-size", "8"]
    run_train(options_for(*common, "--out", str(tmp_path / "plain")))
    run_train(options_for(*common, "--accumulation", "4", "--gradient-checkpointing", "--out", str(tmp_path / "acc")))
    assert adapter_difference(tmp_path / "plain" / "adapter", tmp_path / "acc" / "adapter") <= 1e-6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains_float32_adapter_weights(tmp_path: Path, sums_file: Path, precision: str) -> None:
    outcome = run_train(options_for("--data", str(sums_file), *LM, "--steps", "3", "--precision", precision,
                                    "--out", str(tmp_path / "out")))
    assert all(map(torch.isfinite, torch.tensor(outcome.result.losses)))
    weights = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # it moved from zero


def test_merge_writes_a_model_with_the_adapter_folded_in(tmp_path: Path, sums_file: Path) -> None:
    from transformers import AutoModelForCausalLM

    run_train(options_for("--data", str(sums_file), *LM, "--steps", "3", "--lr", "0.05", "--merge",
                          "--out", str(tmp_path / "out")))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    torch.manual_seed(0)
    adapted = peftlab.load(load_causal_lm("tiny-llama"), tmp_path / "out" / "adapter").eval()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        with adapted.disable_adapters():
            assert not torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
    assert (tmp_path / "out" / "merged" / "tokenizer.json").exists()
    with pytest.raises(TrainConfigError, match="not mergeable"):
        run_train(options_for("--data", str(sums_file), *LM, "--method", "prompt", "--merge",
                              "--out", str(tmp_path / "prompt")))
    assert not (tmp_path / "prompt" / "checkpoints").exists()  # refused before training


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path: Path, labelled_file: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "peftlab", "train", "--data", str(labelled_file), "--model",
                                "tiny-bert", "--steps", "100000", "--save-every", "0", "--no-progress", "--out",
                                str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env())
    while process.poll() is None and not (out / "metrics.jsonl").exists() or len(read_metrics(out)) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    last = read_metrics(out)[-1]["step"]
    assert f"stopped after step {last}" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{last:08d}"]
