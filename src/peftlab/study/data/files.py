"""A user's own data: a CSV or JSONL file with columns text,label (classification), audio,label (audio
classification; audio = a WAV file's path, relative to the data file's folder) or prompt,completion (LM), or a JSONL
file with a `messages` list of {"role", "content"} turns (chat LM, trained on the assistant turns)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from peftlab.study.data.examples import Conversation, Labeled, LabeledData, PromptCompletion
from peftlab.study.errors import StudyError

FileData = LabeledData | list[PromptCompletion] | list[Conversation]
ROLES = ("system", "user", "assistant", "tool")
DATA_FILE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv (header line) or .jsonl (one object a line) file."""
    if not path.exists():
        raise StudyError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise StudyError(f"data file {path} must end in .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not a column name
    except UnicodeDecodeError as err:
        raise StudyError(f"data file {path} is not UTF-8 ({err.reason} at byte {err.start}); save it as "
                         "UTF-8") from None
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise StudyError(f"{path}:{number} is not valid JSON: {err}") from None
            if not isinstance(row, dict):
                raise StudyError(f"{path}:{number} is not a JSON object with named fields")
            rows.append(row)
    return rows


def read_task_file(path: Path, label_names: list[str] | None = None) -> FileData:
    """Labeled texts (columns text,label; labels are names or integers), prompt/completion pairs, or chats
    (`messages`). `label_names`: the classes of another file of the same task (a validation file's labels must be
    among its training file's, and get the same indices)."""
    rows = read_rows(path)
    if not rows:
        raise StudyError(f"data file {path} has no rows")
    columns = set(rows[0])
    if {"audio", "label"} <= columns:
        _require_fields(path, rows, ("audio", "label"))
        rows = [dict(r, text=str((path.parent / str(r["audio"]).strip()).resolve())) for r in rows]
        columns.add("text")
    if {"text", "label"} <= columns:
        _require_fields(path, rows, ("text", "label"))
        labels = [_label(r["label"]) for r in rows]
        names = label_names or sorted(set(labels), key=_label_sort_key)
        if len(names) < 2:
            raise StudyError(f"data file {path}: every row has the label {names[0]!r}; classification needs at "
                             "least two classes")
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise StudyError(f"data file {path} has labels {unknown} that the training data does not have "
                             f"({', '.join(names)})")
        index = {name: i for i, name in enumerate(names)}
        return LabeledData([Labeled(str(r["text"]), index[label]) for r, label in zip(rows, labels)], names)
    if {"prompt", "completion"} <= columns:
        _require_fields(path, rows, ("prompt", "completion"))
        return [PromptCompletion(str(r["prompt"]), str(r["completion"])) for r in rows]
    if "messages" in columns:
        return [_conversation(path, number, row.get("messages")) for number, row in enumerate(rows, 1)]
    raise StudyError(f"data file {path} has columns {sorted(columns)}; expected text,label (classification), "
                     "audio,label (audio classification), prompt,completion or messages (causal language modelling)")


def _conversation(path: Path, number: int, messages: Any) -> Conversation:
    """One chat row: a list of {"role", "content"} with at least one assistant turn."""
    where = f"data file {path}: row {number}"
    if not isinstance(messages, list) or not messages:
        raise StudyError(f"{where}: messages must be a JSON list of {{\"role\": ..., \"content\": ...}} turns")
    turns = []
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise StudyError(f"{where}: each turn needs a role ({', '.join(ROLES)}) and a text content, got {turn!r}")
        turns.append((turn["role"], turn["content"]))
    if not any(role == "assistant" for role, _ in turns):
        raise StudyError(f"{where} has no assistant turn to train on")
    return Conversation(tuple(turns))


def is_audio_file(path: Path) -> bool:
    """Whether a data file's rows name audio files (column `audio`)."""
    rows = read_rows(path)
    return bool(rows) and "audio" in rows[0]


def _require_fields(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    """Every row has every field, not empty (a short CSV row reads as None, a JSONL row may lack a key)."""
    for number, row in enumerate(rows, 1):
        missing = [f for f in fields if row.get(f) is None or str(row.get(f)).strip() == ""]
        if missing:
            raise StudyError(f"data file {path}: row {number} has no {' or '.join(missing)}; fill it in or drop "
                             "the row")


def _label(value: Any) -> str:
    """A label as a class name: surrounding spaces dropped, a whole float (1.0) read as its integer (1)."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "." in text else text


def _label_sort_key(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)
