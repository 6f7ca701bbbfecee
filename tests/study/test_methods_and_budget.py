"""The study's method table, learning-rate options, budgets, train sizes and run ids."""

from __future__ import annotations

import pytest

import peftlab
from peftlab.study.budget import parse_budget, parse_budgets
from peftlab.study.errors import StudyError
from peftlab.study.methods import SURVEY_METHODS, parse_lr_overrides, parse_method, resolve_methods
from peftlab.study.plan import RunSettings, StudyConfig, parse_train_sizes
from peftlab.study.tasks.base import TaskSpec


def test_survey_names_map_to_registry_ids_and_fields() -> None:
    tiny = parse_method("adapter-tiny")
    assert (tiny.method_id, dict(tiny.fields), tiny.lr) == ("adapter", {"preset": "tiny"}, peftlab.Adapter.study_lr)
    assert dict(parse_method("sparse-80").fields) == {"pruning": 0.8}
    assert len(SURVEY_METHODS) == 12 and set(peftlab.method_ids()) >= {m for m, _ in SURVEY_METHODS.values()}


def test_generic_method_syntax_and_lr_overrides() -> None:
    lr = parse_lr_overrides(["lora=2e-3,sparse-40=1e-4", "5e-4"])
    assert lr == {"lora": 2e-3, "sparse-40": 1e-4, "*": 5e-4}
    methods = {m.label: m for m in resolve_methods(["lora:r=16:targets=query|value", "sparse-40", "bitfit"], lr)}
    assert dict(methods["lora:r=16:targets=query|value"].fields) == {"r": 16, "targets": ["query", "value"]}
    assert methods["lora:r=16:targets=query|value"].lr == 2e-3  # by method id
    assert methods["sparse-40"].lr == 1e-4  # by study name
    assert methods["bitfit"].lr == 5e-4  # the bare number


def test_bad_method_options_fail_before_anything_runs() -> None:
    with pytest.raises(StudyError, match="field=value"):
        parse_method("lora:r16")
    with pytest.raises(StudyError, match="more than once"):
        resolve_methods(["lora", "lora"], {})
    with pytest.raises(StudyError, match="method=value"):
        parse_lr_overrides(["lora=fast"])
    # the method id, its field names and their values are checked when the study is planned, not in its runs
    with pytest.raises(StudyError, match="'lorra': unknown method 'lorra'; did you mean lora"):
        parse_method("lorra")
    with pytest.raises(StudyError, match=r"'lora:rr=16': unknown field\(s\) 'rr' \(did you mean 'r'\?\)"):
        parse_method("lora:rr=16")
    with pytest.raises(StudyError, match="dropout=2 is out of range"):
        parse_method("lora:dropout=2")


def test_budgets() -> None:
    assert (parse_budget("params=1%").kind, parse_budget("params=1%").limit) == ("params%", 1.0)
    assert parse_budget("params=250k").limit == 250_000
    assert parse_budget("memory=2GB").limit == 2000 and parse_budget("memory=1500MB").field == "peak_memory_mb"
    assert parse_budget("time=2m").limit == 120 and parse_budget("time=60s").field == "train_seconds"
    assert [b.kind for b in parse_budgets(["params=1%,time=60s", "memory=2000MB"])] == ["params%", "time", "memory"]
    assert parse_budget("time=60s").allows({"train_seconds": 59.0}) and not parse_budget("time=60s").allows({})
    with pytest.raises(StudyError, match="unknown unit"):
        parse_budget("memory=2 parsecs")


def test_plan_run_ids_are_stable_and_full_runs_first() -> None:
    study = StudyConfig(task=TaskSpec(), methods=tuple(resolve_methods(["lora", "full"], {})),
                        train_sizes=parse_train_sizes("100,all"), seeds=(0, 1), settings=RunSettings(steps=5))
    runs = study.runs()
    assert len(runs) == 8 and runs[0].method.label == "full" and runs[1].method.label == "lora"
    assert runs[0].run_id.startswith("sentiment-full-n100-s0-")
    again = StudyConfig.from_dict(study.to_dict()).runs()
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    assert len({r.run_id for r in runs}) == 8
    with pytest.raises(StudyError):
        parse_train_sizes("10,many")


def test_objectives_attach_to_a_method_by_name() -> None:
    method = parse_method("lora:r=4+deft:weight=0.5")
    assert (method.method_id, dict(method.fields)) == ("lora", {"r": 4})
    assert [(name, dict(fields)) for name, fields in method.objectives] == [("deft", {"weight": 0.5})]
    assert method.to_dict()["objectives"] == [["deft", {"weight": 0.5}]]
    assert "objectives" not in parse_method("lora").to_dict()  # run ids of methods without objectives unchanged
    with pytest.raises(StudyError, match="unknown objective 'deff'"):
        parse_method("lora+deff")
    with pytest.raises(StudyError, match="sharpness"):
        parse_method("lora+deft:sharpness=0")
