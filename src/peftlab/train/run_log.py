"""What `peftlab train` records as it goes: OUT/metrics.jsonl (one JSON object a line: step losses and evaluations),
TensorBoard event files in OUT/tensorboard/ when the `tensorboard` package is installed, and a tqdm progress bar
(loss, steps per second, time left) on stderr."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from peftlab.io.atomic import write_text_atomic
from peftlab.train.loop import TrainEvent

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_writer(folder: Path, start_step: int) -> Any:
    """A SummaryWriter for `folder` (events after `start_step` from an interrupted run are purged), or None when
    the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)


class RunLog:
    """The main process's record of a run; `start_step` > 0 continues an interrupted one (its later lines go)."""

    def __init__(self, out: Path, total: int, start_step: int, *, progress: bool, tensorboard: bool = True) -> None:
        self.path = out / METRICS_FILE
        _truncate_after(self.path, start_step)
        self.file = self.path.open("a", encoding="utf-8")
        self.writer = tensorboard_writer(out / TENSORBOARD_DIR, start_step) if tensorboard else None
        self.bar = tqdm(total=total, initial=start_step, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True)
        self.started = time.time()

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps({**record, "time": round(time.time() - self.started, 3)}) + "\n")
        self.file.flush()

    def event(self, event: TrainEvent) -> None:
        """A step or evaluation of the loop."""
        if event.kind == "step":
            self.write({"step": event.step, "loss": event.loss, "lr": event.lr})
            self.bar.n = event.step
            self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
            self.bar.refresh()
            self._scalars("train", event.step, {"loss": event.loss, "lr": event.lr})
        elif event.kind == "eval":
            metrics = event.metrics or {}
            self.write({"step": event.step, "eval": metrics})
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.note(f"step {event.step}: validation {shown}")
            self._scalars("eval", event.step, metrics)

    def note(self, text: str) -> None:
        """A line for the user, on stderr above the bar (line-buffered: it survives a kill)."""
        self.bar.write(text, file=sys.stderr)

    def _scalars(self, group: str, step: int, values: dict[str, float | None]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _truncate_after(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` (written before an interruption; the resumed run writes them again);
    with step 0 the file starts empty."""
    if not path.exists():
        return
    kept = []
    if step:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line torn by a kill
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The records of OUT/metrics.jsonl."""
    path = out / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
