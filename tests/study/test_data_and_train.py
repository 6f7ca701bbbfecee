"""Data sources and splits on the real offline assets, and the training loop on a small real model."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from peftlab.study.data import arithmetic, dialogue, text
from peftlab.study.data.files import read_task_file
from peftlab.study.data.split import split, subsample
from peftlab.study.errors import StudyError
from peftlab.train import NonFiniteLossError, TrainConfig, TrainConfigError, train


def test_sentiment_and_topic_data() -> None:
    sentiment = text.sentiment()
    assert sentiment.label_names == ["negative", "neutral", "positive"] and len(sentiment.examples) > 38_000
    topics = text.bbc_topics()
    assert len(topics.examples) == 2225 and topics.label_names == ["business", "entertainment", "politics",
                                                                   "sports", "tech"]


def test_dialogue_and_arithmetic_data() -> None:
    pairs = dialogue.chatterbot_pairs()
    assert len(pairs) > 1500 and all(p.prompt and p.completion for p in pairs)
    problems = arithmetic.additions(count=50)
    assert len({p.prompt for p in problems}) == 50
    assert all(int(p.completion) == sum(map(int, p.prompt[:-1].split("+"))) for p in problems)


def test_split_is_fixed_and_subsamples_nest() -> None:
    data = list(range(100))
    a, b = split(data, test=10, validation=5, seed=3), split(data, test=10, validation=5, seed=3)
    assert a == b and len(a.train) == 85 and not set(a.test) & set(a.train)
    assert subsample(a.train, 10, 0) == subsample(a.train, 20, 0)[:10]
    with pytest.raises(StudyError, match="cannot hold out"):
        split(data, test=90, validation=20, seed=0)


def test_user_files(tmp_path) -> None:
    (tmp_path / "t.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    data = read_task_file(tmp_path / "t.csv")
    assert data.label_names == ["neg", "pos"] and data.examples[1].label == 0
    (tmp_path / "p.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    assert read_task_file(tmp_path / "p.jsonl")[0].completion == "2"
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StudyError, match="text,label"):
        read_task_file(tmp_path / "x.csv")


def test_user_files_as_spreadsheets_and_scripts_write_them(tmp_path) -> None:
    """A byte-order mark, spaces around labels and 1 against 1.0 are one class each; what cannot be a study's
    data (one class, a row without its label, another encoding) is refused with the row or the fix."""
    (tmp_path / "bom.csv").write_text("\ufefftext,label\ngood, pos\nbad,neg\nfine,pos \n", encoding="utf-8")
    assert read_task_file(tmp_path / "bom.csv").label_names == ["neg", "pos"]
    (tmp_path / "n.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n'
                                      '{"text": "c", "label": "0"}\n')
    assert read_task_file(tmp_path / "n.jsonl").label_names == ["0", "1"]
    for name, body, message in [
        ("one.csv", "text,label\na,pos\nb,pos\n", "classification needs at least two classes"),
        ("short.csv", "text,label\na,pos\nb\nc,neg\n", "row 2 has no label"),
        ("null.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "row 2 has no label"),
        ("list.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n', "2 is not a JSON object"),
    ]:
        (tmp_path / name).write_text(body)
        with pytest.raises(StudyError, match=message):
            read_task_file(tmp_path / name)
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(StudyError, match="is not UTF-8"):
        read_task_file(tmp_path / "latin.csv")


def test_an_edited_data_file_is_a_new_run(tmp_path) -> None:
    from peftlab.study.methods import parse_method
    from peftlab.study.plan import RunSettings, RunSpec
    from peftlab.study.tasks.base import TaskSpec

    path = tmp_path / "t.csv"
    path.write_text("text,label\ngood,pos\nbad,neg\n")
    spec = RunSpec(TaskSpec(str(path)), parse_method("lora", {}), 16, 0, RunSettings())
    before = spec.run_id
    path.write_text("text,label\ngood,pos\nbad,neg\nok,pos\n")
    assert spec.run_id != before
    # a built-in task keeps the run id it had before data digests existed: results stored earlier still resume
    builtin = RunSpec(TaskSpec("sentiment"), parse_method("lora", {}), 16, 0, RunSettings())
    digest = hashlib.sha1(json.dumps(builtin.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    assert builtin.run_id == f"sentiment-lora-n16-s0-{digest}"


def _regression_batches():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 1, generator=generator)
    while True:
        x = torch.randn(16, 8, generator=generator)
        yield {"x": x, "y": x @ weight}


def _mse(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def test_training_loop_learns_and_records_a_curve() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    events = []
    result = train(model, _regression_batches(), _mse, TrainConfig(steps=60, lr=0.05, eval_every=20),
                   device=torch.device("cpu"), evaluate=lambda m: {"w_norm": float(m.weight.norm())},
                   on_event=events.append)
    assert result.losses[-1] < 0.1 * result.losses[0]
    assert [p["step"] for p in result.curve] == [20, 40, 60] and result.examples == 60 * 16
    assert sum(e.kind == "step" for e in events) == 60 and result.median_step_seconds > 0


def test_training_loop_stops_on_nan_and_validates_config() -> None:
    model = nn.Linear(8, 1)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(model, _regression_batches(), lambda m, b: _mse(m, b) * float("nan"), TrainConfig(steps=5, lr=1e-3),
              device=torch.device("cpu"))
    with pytest.raises(TrainConfigError, match="learning rate"):
        TrainConfig(steps=5, lr=-1.0)
