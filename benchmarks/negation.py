"""Negation on real data: does a negated task adapter move a trained model back toward the base model?

    .venv/bin/python -m benchmarks.negation --steps 60 --out negation.md
    .venv/bin/python -m benchmarks.negation --model tiny-llama --steps 5     # seconds: a plumbing check

SmolLM2 on the chatterbot dialogue task (held-out completion loss, lower is better). For LoRA and (IA)³: train a task
adapter T (seed 0) and an independent one T' (seed 1, same data and settings); then measure the held-out loss of the
base model, of T, of T stacked with its own negation −T (exact for LoRA, second order for (IA)³: l (2 − l) = 1 −
(l − 1)²), and of T stacked with −T' (Zhang et al. 2023's negation of a separately trained module). Negation should
move T's loss back toward the base model's.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

import peftlab
from peftlab.study.tasks import TaskSpec, build_task
from peftlab.study.tasks.base import endless_batches
from peftlab.train import TrainConfig, train
from peftlab.train.seed import seed_everything

METHODS = {"lora": lambda: peftlab.LoRA(r=8, alpha=16, targets="all-linear"), "ia3": lambda: peftlab.IA3()}


def held_out_loss(task: object, model: torch.nn.Module, examples: list) -> float:
    with torch.no_grad():
        return task.evaluate(model.eval(), examples, torch.device("cpu"), final=False)["loss"]


def trained(task: object, method: str, seed: int, steps: int, train_set: list) -> peftlab.AdaptedModel:
    seed_everything(seed)
    model = peftlab.adapt(task.build_model(), METHODS[method](), "task")
    batches = endless_batches(train_set, 8, torch.Generator().manual_seed(seed), task.collate, task.length)
    config = TrainConfig(steps=steps, lr=peftlab.get_method(method).study_lr, device="cpu")
    train(model, batches, task.loss, config, device=torch.device("cpu"), train_mode=task.train_mode)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.negation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a causal LM alias (smollm2, tiny-llama)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each adapter")
    parser.add_argument("--train-size", type=int, default=400, help="training examples")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    task = build_task(TaskSpec(name="dialogue", model=args.model, max_length=64, test_size=200, validation_size=20))
    splits = task.splits()
    train_set, test_set = list(splits.train)[: args.train_size], list(splits.test)
    rows = []
    for method in METHODS:
        first = trained(task, method, 0, args.steps, train_set)
        second = trained(task, method, 1, args.steps, train_set)
        second.save(Path("/tmp") / f"negation-{method}-second")
        with first.disable_adapters():
            base = held_out_loss(task, first, test_set)
        task_loss = held_out_loss(task, first, test_set)
        first.add_weighted_adapter("task", [-1.0], "neg_self", **({"combination_type": "cat"} if method == "lora"
                                                                   else {}))
        first.load_adapter(Path("/tmp") / f"negation-{method}-second" / "task", "other")
        first.add_weighted_adapter("other", [-1.0], "neg_other", **({"combination_type": "cat"} if method == "lora"
                                                                     else {}))
        first.set_adapter(["task", "neg_self"])
        self_loss = held_out_loss(task, first, test_set)
        first.set_adapter(["task", "neg_other"])
        other_loss = held_out_loss(task, first, test_set)
        rows.append((method, base, task_loss, self_loss, other_loss))
        print(f"{method}: base {base:.4f}, task {task_loss:.4f}, task − task {self_loss:.4f}, "
              f"task − other {other_loss:.4f}", file=sys.stderr, flush=True)
    command = shlex.join(["python", "-m", "benchmarks.negation", *argv])
    heading = (f"`{command}` ({args.model}, dialogue, {args.steps} steps per adapter, held-out completion loss over "
               f"{len(test_set)} examples)")
    header = ("| method | base | task adapter T | T stacked with −T | T stacked with −T′ (seed 1) | share of T's gain "
              "undone by −T′ |")
    lines = [heading, "", header, "|---|---|---|---|---|---|"]
    for method, base, task_loss, self_loss, other_loss in rows:
        undone = (other_loss - task_loss) / (base - task_loss) if base != task_loss else float("nan")
        lines.append(f"| {method} | {base:.4f} | {task_loss:.4f} | {self_loss:.4f} | {other_loss:.4f} | "
                     f"{100 * undone:.0f}% |")
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
