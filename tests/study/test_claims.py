"""The survey's claims, research questions and tie rule on hand-written records (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.study.claims import (
    CONFIRMED,
    NOT_CONFIRMED,
    NOT_MEASURABLE,
    arithmetic_lora_adapters,
    bitfit_high_data,
    check_claims,
    lora_efficient,
    sparse_80_drops,
)
from peftlab.study.continual import forgetting
from peftlab.study.crossdomain import DomainResult, load_domain, relative_to_full, tie
from peftlab.study.questions import rq1, rq2, rq3
from peftlab.study.results import append_record


def rec(method: str, seed: int, score: float, *, size: int = 1000, percent: float = 1.0, metric: str = "accuracy",
        method_id: str | None = None) -> dict:
    return {"run_id": f"{method}-{size}-{seed}", "method": method, "method_id": method_id or method.split("-")[0],
            "train_size": size, "seed": seed, "status": "ok", "test_metric": score, "metric": metric,
            "higher_is_better": True, "trainable_params": percent * 1e4, "trainable_percent": percent,
            "peak_memory_mb": 500.0, "train_seconds": 10.0, "train_examples": size, "task": "t", "model": "m",
            "steps": 5}


def domain(tmp_path: Path, name: str, scores: dict[str, tuple[float, float]], *, small: dict | None = None,
           percent: dict | None = None) -> DomainResult:
    """A domain whose methods score mean ± (seed 0, seed 1 = mean -/+ half) at size 1000 (and at 100: `small`)."""
    folder = tmp_path / name
    folder.mkdir()
    for size, table in ((1000, scores), (100, small or {})):
        for method, (mean, spread) in table.items():
            for seed, value in enumerate((mean - spread / 2, mean + spread / 2)):
                append_record(folder, rec(method, seed, value, size=size,
                                          percent=(percent or {}).get(method, 100.0 if method == "full" else 0.5)))
    return load_domain(folder, name)


def test_tie_rule_and_relative_scores_per_seed(tmp_path: Path) -> None:
    assert tie((0.80, 0.01), (0.815, 0.01)) and not tie((0.80, 0.01), (0.83, 0.01))
    assert tie((0.8, 0.0), (0.8, 0.0)) and not tie((0.8, 0.0), (0.8001, 0.0))  # one seed: no spread
    d = domain(tmp_path, "text", {"full": (0.80, 0.0), "lora": (0.76, 0.0)})
    assert d.relative["lora"] == pytest.approx((0.95, 0.0)) and d.rank == {"full": 1, "lora": 2}
    # perplexity: lower is better, so full / method (> 1 = better than full)
    records = [dict(rec("full", 0, 10.0), higher_is_better=False), dict(rec("lora", 0, 8.0), higher_is_better=False)]
    assert relative_to_full(records, "lora", 1000, higher=False) == pytest.approx((1.25, 0.0))


def test_claims_confirmed_not_confirmed_and_ties(tmp_path: Path) -> None:
    arithmetic = domain(tmp_path, "arithmetic", {"full": (0.9, 0.0), "lora": (0.85, 0.01), "loreft": (0.60, 0.02),
                                                 "adapter-tiny": (0.80, 0.02)})
    assert arithmetic_lora_adapters([arithmetic]).verdict == CONFIRMED
    close = domain(tmp_path, "arithmetic2", {"lora": (0.61, 0.02), "loreft": (0.60, 0.02), "adapter-tiny": (0.8, 0)})
    close.name = "arithmetic"
    verdict = arithmetic_lora_adapters([close])
    assert verdict.verdict == NOT_CONFIRMED and "tie than LoReFT" in verdict.evidence  # inside the spread

    text = domain(tmp_path, "text", {"full": (0.80, 0.0), "lora": (0.79, 0.0), "sparse-40": (0.78, 0.0),
                                     "sparse-80": (0.70, 0.0), "bitfit": (0.72, 0.0)},
                  small={"full": (0.60, 0.0), "lora": (0.60, 0.0), "sparse-40": (0.6, 0.0), "sparse-80": (0.6, 0.0),
                         "bitfit": (0.70, 0.0)})
    assert lora_efficient([text]).verdict == CONFIRMED
    assert sparse_80_drops([text]).verdict == CONFIRMED and "marked drop" in sparse_80_drops([text]).evidence
    assert bitfit_high_data([text]).verdict == CONFIRMED  # +2 points against a median of +19
    wasteful = domain(tmp_path, "w", {"full": (0.8, 0.0), "lora": (0.79, 0.0)}, percent={"lora": 20.0})
    assert lora_efficient([wasteful]).verdict == NOT_CONFIRMED  # 80% reduction < the survey's 90%
    verdicts = {v.claim: v.verdict for v in check_claims([text])}
    assert list(verdicts.values()).count(NOT_MEASURABLE) == 2  # commonsense; arithmetic not run


def test_research_questions_are_sentences_from_the_numbers(tmp_path: Path) -> None:
    a = domain(tmp_path, "a", {"full": (0.80, 0.02), "lora": (0.80, 0.02), "bitfit": (0.70, 0.0)},
               percent={"lora": 0.5, "bitfit": 0.1})
    b = domain(tmp_path, "b", {"full": (0.90, 0.0), "lora": (0.85, 0.0), "bitfit": (0.60, 0.0)})
    first = " ".join(rq1([a, b]))
    assert "`full` 1.0, `lora` 2.0, `bitfit` 3.0" in first
    assert "full fine-tuning is beaten by: no method" in first
    second = rq2([a, b])
    assert "best `full` at 80.0 ± 1.4, tied with `lora`" in second[0]
    assert "ahead of every other method beyond the spread" in second[1]
    third = " ".join(rq3([a, b]))
    assert "a: `lora`" in third and "as good: `full`" in third  # tied with the best, fewer parameters
    assert "b: `full`" in third


def test_forgetting_is_the_drop_from_the_best_earlier_accuracy() -> None:
    matrix = [[0.9], [0.7, 0.8], [0.6, 0.85, 0.5]]
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.85)) / 2)  # task 1 improved: negative
    assert forgetting([[0.5]]) is None
