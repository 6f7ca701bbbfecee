"""The `peftlab` command. Thin: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from peftlab.errors import PeftlabError


def _methods(args: argparse.Namespace) -> int:
    from peftlab.core.registry import get_method, method_ids
    from peftlab.table import markdown_table, text_table

    rows = [get_method(m).card.row() for m in method_ids()]
    headers = list(rows[0])
    render = markdown_table if args.markdown else text_table
    print(render(headers, [list(r.values()) for r in rows]))
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.io.adapter_files import read_adapter_folder

    folder = read_adapter_folder(Path(args.path))
    config = folder.config
    card = type(config).card
    print(f"{card.name} ({card.id}, {card.kind.value}, mergeable: {'yes' if card.mergeable else 'no'})")
    print(f"config read from {folder.source.value}")
    for key, value in config.to_dict().items():
        print(f"  {key}: {value}")
    sites, saved = folder.data.get("target_modules"), folder.data.get("modules_to_save")
    if isinstance(sites, list):
        shown = ", ".join(map(str, sites[:6])) + (f", ... ({len(sites) - 6} more)" if len(sites) > 6 else "")
        print(f"adapted modules in this folder ({len(sites)}): {shown}")
    if isinstance(saved, list) and saved:
        print(f"trained in full (modules_to_save): {', '.join(map(str, saved))}")
    return 0


def _combine(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.compose.folders import combine_folders

    adapters = [Path(a) for a in args.adapters]
    weights = args.weights if args.weights is not None else [1.0] * len(adapters)
    options = {"combination_type": args.how, "svd_rank": args.svd_rank, "density": args.density,
               "majority_sign_method": args.sign, "seed": args.seed}
    model = combine_folders(Path(args.base), adapters, weights, Path(args.out), **options)
    described = next(line for line in model.summary().splitlines() if line.startswith("adapter 'default'"))
    print(f"wrote {args.out}: {described.removeprefix('adapter ')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftlab",
        description="Parameter-efficient fine-tuning on any PyTorch model, and a study that compares the methods.")
    from peftlab import __version__

    parser.add_argument("--version", action="version", version=f"peftlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    methods = sub.add_parser("methods", help="list the methods with their PEFT-Ref typology and parameter formulas")
    methods.add_argument("--markdown", action="store_true", help="print a Markdown table")
    methods.set_defaults(func=_methods)
    info = sub.add_parser("info", help="describe an adapter folder (ours or Hugging Face PEFT's)")
    info.add_argument("path", help="folder holding adapter_config.json and adapter_model.safetensors")
    info.set_defaults(func=_info)
    combine = sub.add_parser(
        "combine", help="write a new adapter combining adapter folders (task arithmetic, TIES, DARE, SVD)",
        description="Load BASE (a local transformers model folder) with each ADAPTER, combine them with "
                    "add_weighted_adapter and save the result to OUT. LoRA: --how cat (exact), svd (default), "
                    "ties_svd, dare_ties_svd, ...; other methods: linear. A negative weight subtracts an adapter.")
    combine.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders (ours or HF PEFT's)")
    combine.add_argument("--base", required=True, help="the base model's folder (config.json and weights)")
    combine.add_argument("--weights", type=float, nargs="+", default=None, help="one per adapter (default: 1 each)")
    combine.add_argument("--out", required=True, help="folder for the combined adapter")
    combine.add_argument("--how", default=None, help="combination_type (default: svd for LoRA, linear otherwise)")
    combine.add_argument("--svd-rank", type=int, default=None, help="rank of the svd rules (default: largest rank)")
    combine.add_argument("--density", type=float, default=None, help="fraction kept by TIES / DARE / pruning")
    combine.add_argument("--sign", default="total", help="TIES sign election: total or frequency")
    combine.add_argument("--seed", type=int, default=None, help="seed of DARE's random drops")
    combine.set_defaults(func=_combine)
    try:
        from peftlab.study.cli import add_subcommands
        from peftlab.train.cli import add_subcommand as add_train
    except ImportError:  # the study and `train` need optional dependencies
        pass
    else:
        add_subcommands(sub)
        add_train(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PeftlabError as err:
        print(f"peftlab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
