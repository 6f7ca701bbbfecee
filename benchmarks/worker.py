"""One measurement in a fresh process: `python -m benchmarks.worker '<job json>'` prints `RESULT <json>` last.

A worker imports only the library its job uses (peft adds about 3-9 MB of RSS and 1-3 s of start-up, which would
otherwise slow every job). Peak RSS is read after the model is built and the method attached ("build"), and at the
end ("peak").
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from benchmarks import inference, libraries
from benchmarks.configs import METHODS
from benchmarks.jobs import RESULT_PREFIX
from benchmarks.measure import floor_forward, peak_rss_mb, time_floor, time_training_paired
from benchmarks.models import build_model, get_preset


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Build the job's model, apply its configuration, time it; a dict of raw measurements."""
    torch.set_num_threads(job["threads"])
    preset = get_preset(job["model"])
    config, library, warmup, repeats = job["config"], job["library"], job["warmup"], job["repeats"]
    t0 = time.perf_counter()
    model = build_model(preset)
    batch = preset.batch(model, job["quick"])
    build_s = time.perf_counter() - t0
    result: dict[str, Any] = {"build_s": build_s}
    if config == "infer":
        times = inference.inference_latency(library, preset, model, batch, warmup, repeats)
    elif config == "switch":
        times = inference.adapter_switching(library, preset, model, repeats)
    elif config == "floor":
        result["rss_build_mb"] = peak_rss_mb()
        firsts, seconds = time_floor(model, batch, warmup, repeats)
        times = {**seconds.as_dict(), "paired_floor": firsts.total}
    else:
        if config == "full":
            for param in model.parameters():
                param.requires_grad_(True)
        else:
            model = libraries.attach(library, METHODS[config], preset, model)
        result["rss_build_mb"] = peak_rss_mb()
        plain, bypass = libraries.bypassed(library, model)
        floor = floor_forward(plain, model.get_input_embeddings(), batch)
        steps, floors = time_training_paired(model, batch, floor, bypass, warmup, repeats)
        times = {**steps.as_dict(), "paired_floor": floors}
    result.update(times=times, rss_peak_mb=peak_rss_mb(), trainable=_count(model, True), total=_count(model, None))
    return result


def _count(model: torch.nn.Module, requires_grad: bool | None) -> int:
    return sum(p.numel() for p in model.parameters() if requires_grad is None or p.requires_grad == requires_grad)


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    try:
        result = {"status": "ok", **measure(job)}
    except libraries.Skip as skip:
        result = {"status": "skipped", "note": str(skip)}
    except Exception as error:  # noqa: BLE001  (reported in the table, never fatal for the run)
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        result = {"status": "error", "note": f"{type(error).__name__}: {message}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
