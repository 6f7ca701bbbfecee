"""`peftlab train`: argparse wiring only (flags generated from TrainOptions); the work is in command.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peftlab.train.options import FIELDS, TrainOptions, build_options, read_yaml, scalar_type, to_yaml

EXAMPLES = """examples:
  peftlab train --data sentiment --model minilm --method lora:r=8 --steps 200 --out runs/sentiment
  peftlab train --data chats.jsonl --model smollm2 --method lora:r=16:alpha=32 --eval-every 50 --out runs/chat
  peftlab train --print-config > train.yaml; peftlab train --config train.yaml --steps 500
  torchrun --nproc-per-node 4 -m peftlab train --config train.yaml             (DDP; --parallel fsdp to shard)
  torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m peftlab train --config train.yaml                                     (two machines, OUT on a shared disk)
Rerunning a command continues from its last complete checkpoint (--restart starts over)."""


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `train` on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "train", help="train one adapter on your data (config file, checkpoints, resume, torchrun)",
        description="Train one adapter for one base model on one data set. Settings come from the defaults, then "
                    "--config FILE (YAML), then the flags given here.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML file of settings")
    parser.add_argument("--print-config", action="store_true",
                        help="print the complete settings as a commented YAML file and exit")
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        if name == "resume":
            parser.add_argument(flag, nargs="?", const="must", default=argparse.SUPPRESS, metavar="CHECKPOINT",
                                help=FIELDS[name].metadata["help"] + " (--resume alone: must)")
            parser.add_argument("--restart", dest="resume", action="store_const", const="never",
                                default=argparse.SUPPRESS, help="start over: same as --resume never")
            continue
        kind = scalar_type(name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=FIELDS[name].metadata["help"])
        else:
            parser.add_argument(flag, type=kind or str, default=argparse.SUPPRESS, help=FIELDS[name].metadata["help"])
    parser.set_defaults(func=run_command)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The settings of a parsed `peftlab train` command line: defaults, then --config, then the flags."""
    file_values = read_yaml(args.config) if args.config is not None else {}
    return build_options(file_values, {name: value for name, value in vars(args).items() if name in FIELDS})


def run_command(args: argparse.Namespace) -> int:
    """`peftlab train`: exit code 0 when trained, 130 when stopped by Ctrl-C / SIGTERM (after its checkpoint)."""
    from peftlab.train.command import run_train
    from peftlab.train.loop import TrainingStopped

    options = options_from_args(args)
    if args.print_config:
        print(to_yaml(options))
        return 0
    try:
        outcome = run_train(options)
    except TrainingStopped as stopped:
        print(f"stopped after step {stopped.step}; the checkpoint is in {options.out_dir / 'checkpoints'}. Run the "
              "same command again to continue.", file=sys.stderr)
        return 130
    if outcome.main:
        result = outcome.result
        loss = f"; last training loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"adapter: {outcome.adapter}{loss}" + (f"; merged model: {outcome.merged}" if outcome.merged else ""))
        if result.curve:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in result.curve[-1].items() if k not in ("step", "train_loss"))
            print(f"validation at step {int(result.curve[-1]['step'])}: {shown}")
    return 0

