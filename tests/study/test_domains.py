"""The survey's extra domains: molecules (rxnfp's reaction BERT on B3DB, both from PyPI), and the code path of the
domains without an offline model (a model folder and a data file): protein on a small ESM and speech on a small
wav2vec 2.0, both built from configs."""

from __future__ import annotations

import ast
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from peftlab.study.chemistry_model import SMILES_PATTERN, rxnfp_source
from peftlab.study.placement import sites_of, variant_sites
from peftlab.study.tasks import build_task
from peftlab.study.tasks.base import TaskSpec
from tests.study.conftest import read_results, run_cli


def test_molecules_task_tokenises_smiles_like_rxnfp() -> None:
    # the pattern is rxnfp's own (read from its source without importing it: the package imports RDKit)
    source = (rxnfp_source().parents[2] / "tokenization.py").read_text()
    constant = next(node.value.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", "") == "SMI_REGEX_PATTERN")
    assert constant == SMILES_PATTERN

    task = build_task(TaskSpec("molecules", max_length=128, test_size=50, validation_size=50))
    assert task.describe()["classes"] == ["BBB-", "BBB+"] and len(task.data.examples) > 7000
    tokenizer = task.encoder.tokenizer
    vocab = tokenizer.get_vocab()
    for example in task.splits().train[:200]:  # rxnfp: regex split, then each token whole from the vocabulary
        expected = [vocab.get(t, vocab["[UNK]"]) for t in re.findall(SMILES_PATTERN, example.x)][:126]
        assert tokenizer(example.x, truncation=True, max_length=128)["input_ids"] == [
            vocab["[CLS]"], *expected, vocab["[SEP]"]]
    model = task.build_model()
    assert sum(p.numel() for p in model.bert.parameters()) == pytest.approx(6.67e6, rel=0.01)  # the pretrained BERT
    sites = variant_sites(sites_of(model))
    assert set(sites) == {"attention", "feed-forward", "both", "early", "late"}
    assert {s.block for s in sites["early"]} == set(range(6)) and {s.block for s in sites["late"]} == set(range(6, 12))


ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]


def test_a_domain_without_an_offline_model_runs_from_a_model_folder_and_a_data_file(tmp_path: Path) -> None:
    from transformers import EsmConfig, EsmForSequenceClassification, EsmTokenizer

    folder = tmp_path / "esm"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    EsmTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=300, pad_token_id=1, mask_token_id=32,
                       num_labels=2)
    EsmForSequenceClassification(config).save_pretrained(folder)
    rows = ["text,label"] + [f"{'MKV' * (i % 5 + 2)}{'LAG' if i % 2 else 'WYC'},{'membrane' if i % 2 else 'soluble'}"
                             for i in range(60)]
    data = tmp_path / "proteins.csv"
    data.write_text("\n".join(rows) + "\n")

    out = tmp_path / "survey"
    assert run_cli("survey", "--quick", "--domains", "protein", "--domain-model", f"protein={folder}",
                   "--domain-data", f"protein={data}", "--modes", "methods", "--methods", "lora", "--steps", "2",
                   "--train-sizes", "8", "--placement-domains", "protein", "--no-progress",
                   "--out", str(out)) == 0
    records = read_results(out / "methods" / "protein")
    assert [r["status"] for r in records] == ["ok"], [r["error"] for r in records]
    assert records[0]["model"] == str(folder) and records[0]["config"]["method"]["method"] == "lora"
    assert "## Domain: protein" in (out / "report.md").read_text()


def _tone(path: Path, hertz: float, seconds: float = 0.4, rate: int = 8000) -> None:
    """A 16-bit mono WAV sine tone (8 kHz: the reader resamples to 16 kHz)."""
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((0.5 * np.sin(2 * np.pi * hertz * t) * 32767).astype("<i2").tobytes())


def test_the_speech_domain_runs_from_an_audio_model_folder_and_wav_files(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    folder = tmp_path / "wav2vec2"
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_labels=2)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    (tmp_path / "clips").mkdir()
    rows = ["audio,label"]
    for i in range(40):
        _tone(tmp_path / "clips" / f"{i}.wav", 300 + 40 * i if i % 2 else 2000 + 40 * i)
        rows.append(f"clips/{i}.wav,{'low' if i % 2 else 'high'}")
    (tmp_path / "speech.csv").write_text("\n".join(rows) + "\n")

    out = tmp_path / "survey"
    assert run_cli("survey", "--quick", "--domains", "speech", "--domain-model", f"speech={folder}",
                   "--domain-data", f"speech={tmp_path / 'speech.csv'}", "--modes", "methods", "--methods", "lora",
                   "--steps", "2", "--train-sizes", "8", "--placement-domains", "speech", "--no-progress",
                   "--out", str(out)) == 0
    records = read_results(out / "methods" / "speech")
    assert [r["status"] for r in records] == ["ok"], [r["error"] for r in records]
    assert records[0]["task_info"]["input_size"] == "16 kHz audio, up to 4 s"
    sites = records[0]["config"]["method"]["targets"]
    assert sites is None and records[0]["trainable_params"] > 0  # LoRA's default targets: q_proj, v_proj
    report = (out / "report.md").read_text()
    assert "## Domain: speech" in report and "**protein**" in report  # the other hub-only domain: not measured
