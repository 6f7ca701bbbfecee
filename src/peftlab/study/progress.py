"""Progress display of a study: one bar for the whole study, one per run in progress (tqdm, on stderr)."""

from __future__ import annotations

from typing import Any, Protocol

from tqdm import tqdm

from peftlab.study.plan import RunSpec


class Progress(Protocol):
    """What the runner tells the user as a study goes."""

    def start(self, total: int, skipped: int, skipped_failed: int = 0) -> None: ...
    def run_started(self, spec: RunSpec) -> None: ...
    def run_event(self, event: dict[str, Any]) -> None:
        """A worker's progress event, with the `run_id` of its run."""
        ...

    def run_finished(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def note(self, message: str) -> None: ...


class TqdmProgress:
    """tqdm bars: runs done / total (with the failure count), and the steps of each run in progress with its loss
    (runs executed elsewhere, e.g. on Ray, only move the first bar)."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.overall: tqdm | None = None
        self.bars: dict[str, tqdm] = {}
        self.failed = 0

    def start(self, total: int, skipped: int, skipped_failed: int = 0) -> None:
        self.overall = tqdm(total=total, initial=skipped, desc="study", unit="run", position=0,
                            disable=self.disable, dynamic_ncols=True)
        if skipped:
            failed = (f" ({skipped_failed} of them failed; --retry-failed runs those again)"
                      if skipped_failed else "")
            tqdm.write(f"resuming: {skipped} of {total} runs already finished{failed}")

    def run_started(self, spec: RunSpec) -> None:
        if self.disable:
            return
        size = "all" if spec.train_size is None else spec.train_size
        used = {bar.pos for bar in self.bars.values()}
        position = next(p for p in range(1, len(self.bars) + 2) if p not in used and -p not in used)
        self.bars[spec.run_id] = tqdm(total=spec.settings.steps, desc=f"{spec.method.label} n={size} seed={spec.seed}",
                                      unit="step", position=position, leave=False, disable=self.disable,
                                      dynamic_ncols=True)

    def run_event(self, event: dict[str, Any]) -> None:
        bar = self.bars.get(event.get("run_id", ""))
        if bar is None:
            return
        kind = event.get("event")
        if kind == "step":
            if event["step"] < bar.n:  # the next task of a continual-learning run starts again at step 1
                bar.reset(total=event["total"])
            bar.update(event["step"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.3f}", refresh=False)
        elif kind == "eval" and event.get("metrics"):
            shown = {k: f"{v:.3f}" for k, v in list(event["metrics"].items())[:2]}
            bar.set_postfix(shown, refresh=True)
        elif kind == "phase":
            bar.set_description_str(f"{bar.desc.split(' [')[0]} [{event['phase']}]")

    def run_finished(self, record: dict[str, Any]) -> None:
        bar = self.bars.pop(record["run_id"], None)
        if bar is not None:
            bar.close()
        if record["status"] == "ok":
            metric = record.get("metric", "metric")
            line = f"  ok     {record['run_id']}: test {metric} {record['test_metric']:.4f}, " \
                   f"train {record['train_seconds']:.0f}s"
        else:
            self.failed += 1
            line = f"  FAILED {record['run_id']}: {record['error']}"
        if self.overall is None or self.disable:
            print(line, flush=True)
            return
        self.overall.write(line)
        self.overall.set_postfix(failed=self.failed, refresh=False)
        self.overall.update(1)

    def note(self, message: str) -> None:
        """A line for the user about the study folder (a lock taken over, a results file repaired)."""
        tqdm.write(message)

    def close(self) -> None:
        for bar in [*self.bars.values(), self.overall]:
            if bar is not None:
                bar.close()
