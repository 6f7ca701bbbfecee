"""A user's own data: a CSV or JSONL file with columns text,label (classification) or prompt,completion (LM)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from peftlab.study.data.examples import Labeled, LabeledData, PromptCompletion
from peftlab.study.errors import StudyError

FileData = LabeledData | list[PromptCompletion]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv (header line) or .jsonl (one object a line) file."""
    if not path.exists():
        raise StudyError(f"data file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise StudyError(f"{path}:{number} is not valid JSON: {err}") from None
        return rows
    raise StudyError(f"data file {path} must end in .csv or .jsonl")


def read_task_file(path: Path) -> FileData:
    """Labeled texts (columns text,label; labels are names or integers) or prompt/completion pairs."""
    rows = read_rows(path)
    if not rows:
        raise StudyError(f"data file {path} has no rows")
    columns = set(rows[0])
    if {"text", "label"} <= columns:
        names = sorted({str(r["label"]) for r in rows}, key=_label_sort_key)
        index = {name: i for i, name in enumerate(names)}
        return LabeledData([Labeled(str(r["text"]), index[str(r["label"])]) for r in rows], names)
    if {"prompt", "completion"} <= columns:
        return [PromptCompletion(str(r["prompt"]), str(r["completion"])) for r in rows]
    raise StudyError(f"data file {path} has columns {sorted(columns)}; expected text,label (classification) "
                     "or prompt,completion (causal language modelling)")


def _label_sort_key(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)
