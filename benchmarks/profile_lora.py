"""Where the time and memory of one training step go, peftlab vs Hugging Face PEFT, for one method (default LoRA).

    .venv/bin/python -m benchmarks.profile_lora --model llama-small --config lora_all_nodrop --out profile.md

Three views, each library in its own process: (1) a torch.profiler table of the operators with the most self CPU
time, plus the number of operator calls per step; (2) the bytes autograd saves for backward during the forward
(activations only: storages of parameters are excluded), the main driver of training memory; (3) a micro-benchmark
of a single adapted linear layer (forward + backward), which isolates the per-site overhead from the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.jobs import REPO, RESULT_PREFIX
from benchmarks.stats import median


def saved_for_backward_mb(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """(MB, tensors) that autograd keeps for backward in one forward, parameters' storages excluded."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20, len(seen)


def profile_library(model_name: str, config: str, library: str, steps: int, top: int, quick: bool) -> dict[str, Any]:
    """Profile `steps` training steps of `config` on `model_name` with `library` (in this process)."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks import libraries
    from benchmarks.configs import METHODS
    from benchmarks.measure import time_training
    from benchmarks.models import build_model, get_preset

    preset = get_preset(model_name)
    model = build_model(preset)
    batch = preset.batch(model, quick)
    model = libraries.attach(library, METHODS[config], preset, model)
    saved_mb, saved_count = saved_for_backward_mb(model, batch)
    time_training(model, batch, warmup=2, repeats=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        times = time_training(model, batch, warmup=0, repeats=steps)
    events = prof.key_averages()
    calls = sum(e.count for e in events if e.key.startswith("aten::")) / steps
    table = events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
    return {"library": library, "step": median(times.total), "forward": median(times.forward),
            "backward": median(times.backward), "optimizer": median(times.optimizer), "aten_calls": calls,
            "saved_mb": saved_mb, "saved_tensors": saved_count, "table": table}


def layer_microbenchmark(d_in: int, d_out: int, tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward (to the input) through one Linear(d_in, d_out): frozen, HF LoRA,
    peftlab LoRA (r=8, dropout 0), interleaved call by call."""
    import torch
    from peft import LoraConfig, get_peft_model

    import peftlab

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(d_in, d_out)).requires_grad_(False)
    hf = get_peft_model(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), LoraConfig(r=8, target_modules=["0"]))
    ours = peftlab.adapt(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), peftlab.LoRA(r=8, targets=["0"]))
    x = torch.randn(tokens, d_in, requires_grad=True)
    times: dict[str, list[float]] = {"frozen": [], "HF PEFT": [], "peftlab": []}
    for i in range(repeats + 3):
        for name, module in (("frozen", base), ("HF PEFT", hf), ("peftlab", ours)):
            t0 = time.perf_counter()
            module(x).sum().backward()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
            x.grad = None
    return {name: median(values) for name, values in times.items()}


def _in_subprocess(args: argparse.Namespace, library: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.profile_lora", "--worker", library, "--model", args.model,
               "--config", args.config, "--steps", str(args.steps), "--top", str(args.top), "--threads",
               str(args.threads), *(["--quick"] if args.quick else [])]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"profiling {library} failed: {proc.stderr.strip()[-2000:]}")


def render(args: argparse.Namespace, results: list[dict[str, Any]], layers: list[tuple[str, dict[str, float]]]) -> str:
    """The profile as Markdown."""
    lines = [(f"# Profile: {args.config} on {args.model}{' (quick shapes)' if args.quick else ''}, "
              f"{args.threads} thread(s), {args.steps} profiled steps"), "",
             "| library | step s | fwd s | bwd s | opt s | aten calls / step | saved for backward MB (tensors) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['library']} | {r['step']:.3f} | {r['forward']:.3f} | {r['backward']:.3f} | "
                     f"{r['optimizer']:.4f} | {r['aten_calls']:.0f} | {r['saved_mb']:.1f} ({r['saved_tensors']}) |")
    lines += ["", "One adapted Linear, forward + backward to the input, median ms:", "",
              "| layer | frozen | HF PEFT | peftlab |", "| --- | --- | --- | --- |"]
    for label, t in layers:
        lines.append(f"| {label} | {t['frozen'] * 1e3:.2f} | {t['HF PEFT'] * 1e3:.2f} | {t['peftlab'] * 1e3:.2f} |")
    for r in results:
        lines += ["", f"## Top operators by self CPU time: {r['library']}", "", "```", r["table"].rstrip(), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-small")
    parser.add_argument("--config", default="lora_all_nodrop")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        result = profile_library(args.model, args.config, args.worker, args.steps, args.top, args.quick)
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    results = [_in_subprocess(args, library) for library in ("hf", "peftlab")]
    tokens = 64 if args.quick else 1024
    layers = [(f"{i}->{o}, {tokens} tokens", layer_microbenchmark(i, o, tokens, 5 if args.quick else 30))
              for i, o in ((512, 512), (512, 1408), (1408, 512))]
    report = render(args, results, layers)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
