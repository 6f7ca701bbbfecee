"""Serving benchmark: one base model, many LoRA adapters, mixed batches; and an adapter pool on disk.

    .venv/bin/python -m benchmarks.serving --out serving.md                  # both tables, default models
    .venv/bin/python -m benchmarks.serving --models minilm --distinct 1,4,16,32 --repeats 5
    .venv/bin/python -m benchmarks.serving --quick                            # seconds: a plumbing check

Latency table: a batch of 32 sequences (MiniLM 128 tokens, SmolLM2 64), 32 LoRA adapters r=8 on all linear layers
(random, saved once and loaded by both libraries from the same files). For 1, 4, 16 and 32 distinct adapters in the
batch (sample i uses adapter i mod k), the latency of peftlab's routed call (`adapter_names`) against Hugging Face
PEFT's `adapter_names` on the same batch, and against one adapter for the whole batch (peftlab, not routed). Each
measurement alternates the three calls, in one process, and reports medians and ratios of paired calls.

Pool table: `AdapterPool` over N adapters on disk (LoRA r=8 on q,v of MiniLM, 16-token requests in batches of 32)
with max_loaded K: requests/s, loads, evictions, load time and peak RSS, for users drawn uniformly and with a
Zipf(1.1) skew, against the same requests served by one adapter.
"""

from __future__ import annotations

import argparse
import copy
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.measure import peak_rss_mb
from benchmarks.models import BERT_ALL_LINEAR, LLAMA_ALL_LINEAR, get_preset

SERVING_SHAPES = {"minilm": (32, 128, BERT_ALL_LINEAR), "smollm2": (32, 64, LLAMA_ALL_LINEAR)}


def _adapters(model: nn.Module, targets: tuple[str, ...], count: int, folder: Path, r: int = 8) -> list[str]:
    """`count` LoRA adapters with random A and B, saved by peftlab under folder/<name>."""
    import peftlab

    names = [f"user{i}" for i in range(count)]
    for i, name in enumerate(names):
        torch.manual_seed(1000 + i)
        adapted = peftlab.adapt(copy.deepcopy(model), peftlab.LoRA(r=r, alpha=2 * r, targets=targets,
                                                                    init="random", modules_to_save=[]))
        adapted.save(folder / name)
    return names


def latency_table(model_name: str, distinct: list[int], repeats: int, quick: bool, folder: Path) -> list[dict]:
    """One row per number of distinct adapters: medians of peftlab routed, HF PEFT adapter_names, single adapter."""
    from peft import PeftModel

    import peftlab

    batch, length, targets = SERVING_SHAPES[model_name]
    if quick:
        batch, length = 8, 16
    base = get_preset(model_name).build().eval()
    names = _adapters(base, targets, max(distinct), folder)
    ours = peftlab.load(copy.deepcopy(base), folder / names[0], names[0])
    hf = PeftModel.from_pretrained(copy.deepcopy(base), folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        ours.load_adapter(folder / name, name)
        hf.load_adapter(folder / name, adapter_name=name)
    ours.eval()
    hf.eval()
    ids = torch.randint(0, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows = []
    for k in distinct:
        routing = [names[i % k] for i in range(batch)]
        calls = {"peftlab": lambda r=routing: ours(**inputs, adapter_names=r),
                 "hf": lambda r=routing: hf(**inputs, adapter_names=r),
                 "single": lambda: ours(**inputs)}
        times: dict[str, list[float]] = {name: [] for name in calls}
        order = list(calls)
        with torch.inference_mode():
            for i in range(repeats + 1):
                for name in order if i % 2 == 0 else order[::-1]:
                    began = time.perf_counter()
                    calls[name]()
                    if i:  # the first round warms up
                        times[name].append(time.perf_counter() - began)
        ratio = {other: statistics.median(a / b for a, b in zip(times["peftlab"], times[other]))
                 for other in ("hf", "single")}
        rows.append({"model": model_name, "distinct": k, **{f"{n}_s": statistics.median(t) for n, t in times.items()},
                     "vs_hf": ratio["hf"], "vs_single": ratio["single"]})
        print(f"{model_name} k={k}: " + ", ".join(f"{n} {statistics.median(t):.3f} s" for n, t in times.items()),
              file=sys.stderr, flush=True)
    return rows


def pool_table(adapters: int, requests: int, max_loaded: int, quick: bool, folder: Path) -> list[dict]:
    """AdapterPool on `adapters` MiniLM LoRA adapters: uniform and Zipf users, against one adapter."""
    import peftlab

    base = get_preset("minilm").build().eval()
    began = time.perf_counter()
    names = _adapters(base, ("query", "value"), adapters, folder)
    save_seconds = time.perf_counter() - began
    batch, length = (8, 8) if quick else (32, 16)
    gen = random.Random(3)
    weights = [1.0 / (i + 1) ** 1.1 for i in range(adapters)]
    traffic = {"uniform": [gen.choice(names) for _ in range(requests)],
               "zipf 1.1": gen.choices(names, weights=weights, k=requests),
               "one adapter": [names[0]] * requests}
    ids = torch.randint(0, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(2))
    rows = []
    for label, users in traffic.items():
        pool = peftlab.AdapterPool(copy.deepcopy(base), folder, max_loaded=max_loaded)
        began = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, requests, batch):
                chunk = users[start:start + batch]
                pool(chunk, input_ids=ids[: len(chunk)])
        seconds = time.perf_counter() - began
        loaded = len(pool.loaded)
        rows.append({"traffic": label, "requests_per_s": requests / seconds, "loads": pool.stats.loads,
                     "evictions": pool.stats.evictions, "load_s": pool.stats.load_seconds,
                     "mb_per_adapter": pool.loaded_bytes() / max(loaded, 1) / 1e6, "peak_rss_mb": peak_rss_mb()})
        print(f"pool {label}: {requests / seconds:.1f} requests/s, {pool.stats.loads} loads, "
              f"{pool.stats.evictions} evictions", file=sys.stderr, flush=True)
    rows.append({"traffic": "saving the adapters", "seconds": save_seconds})
    return rows


def render(latency: list[dict], pool: list[dict], command: str, settings: str) -> str:
    lines = ["## Serving: mixed-adapter batches and the adapter pool", "", f"`{command}` ({settings})", ""]
    if latency:
        header = ("| model | distinct adapters | peftlab routed s | HF PEFT adapter_names s | one adapter s | "
                  "× HF PEFT | × one adapter |")
        lines += [header, "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['distinct']} | {r['peftlab_s']:.3f} | {r['hf_s']:.3f} | {r['single_s']:.3f} | "
                  f"{r['vs_hf']:.2f} | {r['vs_single']:.2f} |" for r in latency]
        lines.append("")
    if pool:
        lines += ["| traffic | requests/s | loads | evictions | load s | MB per loaded adapter | peak RSS MB |",
                  "|---|---|---|---|---|---|---|"]
        for r in pool:
            if "requests_per_s" in r:
                lines.append(f"| {r['traffic']} | {r['requests_per_s']:.1f} | {r['loads']} | {r['evictions']} | "
                             f"{r['load_s']:.1f} | {r['mb_per_adapter']:.2f} | {r['peak_rss_mb']:.0f} |")
            else:
                lines.append(f"| {r['traffic']} | {r['seconds']:.0f} s | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,smollm2", help="latency table models (minilm, smollm2)")
    parser.add_argument("--distinct", default="1,4,16,32", help="distinct adapters per batch")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds per setting")
    parser.add_argument("--pool-adapters", type=int, default=1000, help="adapters on disk for the pool table")
    parser.add_argument("--requests", type=int, default=2000, help="requests served from the pool")
    parser.add_argument("--max-loaded", type=int, default=64, help="the pool's max_loaded")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny batches and counts: a plumbing check")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    distinct = [int(k) for k in args.distinct.split(",")]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in SERVING_SHAPES]
    if unknown:
        parser.error(f"--models: {unknown} not among {list(SERVING_SHAPES)}")
    pool_size, requests = (20, 40) if args.quick else (args.pool_adapters, args.requests)
    max_loaded = min(args.max_loaded, 8) if args.quick else args.max_loaded
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        latency = [row for m in models for row in latency_table(m, distinct, repeats, args.quick, Path(tmp) / m)]
        pool = pool_table(pool_size, requests, max_loaded, args.quick, Path(tmp) / "pool")
    settings = (f"{args.threads} threads, {repeats} measured rounds, pool of {pool_size} adapters, "
                f"{requests} requests, max_loaded {max_loaded}")
    report = render(latency, pool, shlex.join(["python", "-m", "benchmarks.serving", *argv]), settings)
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
