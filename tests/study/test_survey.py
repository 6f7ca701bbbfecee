"""`peftlab survey` end to end on small models built from configs (real data): two domains, the placement and
continual-learning experiments, the cross-domain report, resuming, and `peftlab findings`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from peftlab.study.errors import StudyError
from peftlab.study.methods import SURVEY_METHODS, survey_method_names
from tests.study.conftest import read_results, run_cli

SURVEY = ("survey", "--quick", "--domains", "sentiment,arithmetic", "--domain-model", "sentiment=tiny-bert",
          "--domain-model", "arithmetic=tiny-llama", "--methods", "full,lora", "--train-sizes", "8", "--steps", "2",
          "--continual-model", "tiny-bert", "--continual-methods", "lora", "--placement-domains", "sentiment",
          "--threads", "1", "--parallel", "2", "--no-progress")


def test_survey_runs_every_mode_reports_resumes_and_publishes(tmp_path: Path) -> None:
    out = tmp_path / "survey"
    assert run_cli(*SURVEY, "--out", str(out)) == 0

    manifest = json.loads((out / "survey.json").read_text())
    assert [d["name"] for d in manifest["domains"]] == ["sentiment", "arithmetic"]
    assert manifest["sessions"][0]["finished"] and manifest["command"].startswith("peftlab survey")
    for domain in ("sentiment", "arithmetic"):
        records = read_results(out / "methods" / domain)
        assert sorted((r["method"], r["train_size"]) for r in records) == [("full", 8), ("lora", 8)]
        assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    placement = {r["method"]: r for r in read_results(out / "placement" / "sentiment")}
    assert set(placement) == {f"lora@{v}" for v in ("attention", "feed-forward", "both", "early", "late")}
    counts = [r["trainable_params"] for r in placement.values()]
    assert max(counts) / min(counts) < 1.1  # one budget, up to rank rounding
    assert placement["lora@attention"]["config"]["method"]["r"] > placement["lora@both"]["config"]["method"]["r"]
    continual = {r["continual"]["strategy"]: r for r in read_results(out / "continual")}
    assert set(continual) == {"per-task", "shared"}
    for r in continual.values():
        matrix = r["continual"]["accuracy_matrix"]
        assert [len(row) for row in matrix] == [1, 2] and r["test_metric"] == pytest.approx(sum(matrix[1]) / 2)
        assert r["continual"]["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    # one adapter per task stores two adapters' parameters; the shared one, one
    assert continual["per-task"]["trainable_params"] > continual["shared"]["trainable_params"]
    assert continual["per-task"]["continual"]["forgetting"] == 0.0  # the task's own adapter is untouched

    md = (out / "report.md").read_text()
    for section in ("## Domains", "## Across domains", "## Parameter reduction", "## RQ1", "## RQ2", "## RQ3",
                    "## The survey's claims", "## Continual learning", "### Placement on sentiment",
                    "## Domain: arithmetic", "**protein**", "not measurable here"):
        assert section in md, section
    assert "data:image/png;base64," in (out / "report.html").read_text()
    (out / "report.md").unlink()
    assert run_cli("report", str(out)) == 0 and "## RQ3" in (out / "report.md").read_text()

    start = time.perf_counter()  # resuming runs nothing
    assert run_cli(*SURVEY, "--out", str(out), "--no-report") == 0
    assert len(read_results(out / "methods" / "sentiment")) == 2 and time.perf_counter() - start < 20
    assert len(json.loads((out / "survey.json").read_text())["sessions"]) == 2

    findings = tmp_path / "docs" / "findings.md"
    assert run_cli("findings", str(out), "--to", str(findings)) == 0
    text = findings.read_text()
    assert f"peftlab findings {out} --to {findings}" in text and "Commit:" in text and "total wall time" in text
    assert "](findings_plots/relative_vs_params.png)" in text and (findings.parent / "findings_plots").is_dir()
    assert "data:image/png;base64," in findings.with_suffix(".html").read_text()


def test_methods_added_to_the_table_or_the_registry_join_the_survey(monkeypatch: pytest.MonkeyPatch) -> None:
    names = survey_method_names()
    assert names[: len(SURVEY_METHODS)] == list(SURVEY_METHODS)
    assert {"vera", "kasa", "adalink", "lora+deft"} <= set(names[len(SURVEY_METHODS):])  # registered, not in the table
    monkeypatch.setitem(SURVEY_METHODS, "lora-r16", ("lora", {"r": 16}))
    assert "lora-r16" in survey_method_names()
    monkeypatch.delitem(SURVEY_METHODS, "ia3")  # a registered method the table does not name joins under its id
    assert survey_method_names().index("ia3") >= len(SURVEY_METHODS)


@pytest.mark.parametrize(("options", "message"), [
    (("--domains", "sentiment,astrology"), r"--domains: unknown \['astrology'\]"),
    (("--domains", "protein", "--placement-domains", "protein"),
     "domain .protein. has no built-in data; give it with --domain-data protein="),
    (("--modes", "methods,dreams"), "--modes 'methods,dreams': choose from methods, continual, placement"),
    (("--lr", "vera=1e-3"), r"--lr names \['vera'\], which the survey does not run"),
    (("--placement-domains", "topic"), r"--placement-domains \['topic'\] are not among the survey's domains"),
    (("--domain-model", "sentimentt=tiny-bert"), "--domain-model 'sentimentt=tiny-bert': expected DOMAIN=VALUE"),
])
def test_bad_survey_options_stop_before_anything_runs(tmp_path: Path, options: tuple[str, ...],
                                                      message: str) -> None:
    with pytest.raises(StudyError, match=message):
        run_cli("survey", "--quick", "--domains", "sentiment", *options, "--out", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
