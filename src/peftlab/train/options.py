"""The settings of `peftlab train`: one frozen dataclass whose field help is both the --help text and the comments of
the YAML file `--print-config` writes. Precedence: defaults, then the YAML file (`--config`), then command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from peftlab.train.config import PRECISIONS, TrainConfigError
from peftlab.train.distributed import STRATEGIES

RESUME_MODES = ("auto", "must", "never")


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Everything `peftlab train` needs to train one adapter."""

    data: str | None = _field(None, "training data: a built-in data set (sentiment, topic, dialogue, arithmetic) or a "
                                    ".csv/.jsonl file with text,label (classification), prompt,completion or messages "
                                    "(chat, JSON lines) columns. Required")
    model: str | None = _field(None, "base model: an alias (minilm, tiny-bert, smollm2, tiny-llama), a local folder or "
                                     "a hub id; default minilm for classification data, smollm2 for language data")
    method: Any = dataclasses.field(default="lora", metadata={"help": (
        "method and its fields, e.g. lora:r=16:alpha=32:targets=q_proj|v_proj (any registered method, see `peftlab "
        "methods`); in YAML also a mapping {id: lora, r: 16}")})
    out: str = _field("peftlab-train", "output folder: adapter/, checkpoints/, metrics.jsonl, tensorboard/")
    validation: Any = dataclasses.field(default=None, metadata={"help": (
        "validation data: a file like --data, or a fraction (0.1) or a number (200) of examples held out of --data; "
        "default the built-in split, or 10%% of a file (at most 1000); 0 = none")})
    chat: bool = _field(False, "wrap prompt,completion rows in the tokenizer's chat template (messages rows always "
                               "are)")
    max_length: int = _field(128, "tokens per example (longer ones are cut)")
    steps: int = _field(100, "optimiser steps")
    batch_size: int = _field(8, "examples per optimiser step, over all processes and accumulation steps")
    accumulation: int = _field(1, "micro-batches per step (gradient accumulation): each holds "
                                  "batch_size / (accumulation x processes) examples")
    lr: float | None = _field(None, "peak learning rate; default the method's own (the study's table)")
    warmup: float = _field(0.06, "fraction of the steps with a linear warmup, then linear decay to 0")
    weight_decay: float = _field(0.0, "AdamW weight decay (not on biases and norm weights)")
    grad_clip: float = _field(1.0, "max gradient norm; 0 = no clipping")
    seed: int = _field(0, "seed of the adapter's initialisation, the data order and dropout")
    eval_every: int = _field(0, "evaluate on the validation data every this many steps (and at the end); 0 = at the "
                                "end only")
    save_every: int = _field(50, "write a checkpoint every this many steps (and on Ctrl-C and at the end); 0 = only "
                                 "then")
    keep_checkpoints: int = _field(2, "how many of the newest checkpoints to keep")
    resume: str = _field("auto", "auto: continue from the last complete checkpoint in OUT/checkpoints when there is "
                                 "one; must: fail when there is none; never: start over (old checkpoints are "
                                 "deleted); or the path of one checkpoint folder")
    log_every: int = _field(1, "write the training loss to metrics.jsonl every this many steps")
    precision: str = _field("fp32", "fp32, or bf16 / fp16 autocast (adapter weights stay float32)")
    gradient_checkpointing: bool = _field(False, "recompute activations in backward (less memory, more time)")
    device: str = _field("auto", "auto, cpu, cuda, cuda:N or mps (under torchrun: cuda means cuda:LOCAL_RANK)")
    parallel: str = _field("ddp", "how several processes (torchrun, accelerate launch) train: ddp (a replica each) or "
                                  "fsdp (parameters sharded over the processes)")
    threads: int | None = _field(None, "torch CPU threads (default: torch's choice)")
    merge: bool = _field(False, "also write OUT/merged: the base model with the adapter folded in (mergeable methods)")
    progress: bool = _field(True, "show a progress bar (loss, rate, time left)")

    def __post_init__(self) -> None:
        counts = {"steps": 1, "batch_size": 1, "accumulation": 1, "max_length": 1, "log_every": 1,
                  "keep_checkpoints": 1, "eval_every": 0, "save_every": 0}
        for name, low in counts.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TrainConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.parallel not in STRATEGIES:
            raise TrainConfigError(f"parallel {self.parallel!r}: choose {' or '.join(STRATEGIES)}")
        if self.threads is not None and self.threads < 1:
            raise TrainConfigError(f"threads must be >= 1, got {self.threads}")
        if not isinstance(self.method, (str, dict)):
            raise TrainConfigError(f"method must be a string like lora:r=16 or a mapping with an id, got "
                                   f"{self.method!r}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainOptions)}


def field_help(name: str) -> str:
    return FIELDS[name].metadata["help"].replace("%%", "%")


def scalar_type(name: str) -> type | None:
    """The one scalar type of a field (int, float, str or bool), or None for free-form fields (method,
    validation)."""
    hint = typing.get_type_hints(TrainOptions)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else None


def from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check the keys and value types of a YAML mapping; TrainConfigError naming the closest key of a typo."""
    checked = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            close = difflib.get_close_matches(name, list(FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; settings: {', '.join(FIELDS)}"
            raise TrainConfigError(f"{source}: unknown setting {key!r}{hint}")
        kind = scalar_type(name)
        if value is not None and kind is not None and not _fits(value, kind):
            raise TrainConfigError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
        checked[name] = float(value) if kind is float and value is not None else value
    return checked


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings in a YAML file (safe_load: plain data only)."""
    import yaml

    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist; write one with `peftlab train --print-config "
                               f"> {path.name}`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path} must hold a mapping of settings (key: value lines)")
    return from_mapping(data, str(path))


def build_options(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainOptions:
    """Defaults, then the file's values, then the flags given on the command line."""
    return TrainOptions(**{**file_values, **flag_values})


def to_yaml(options: TrainOptions) -> str:
    """A complete YAML file of `options`, every setting preceded by its help as a comment."""
    import textwrap

    import yaml

    lines = ["# peftlab train --config this.yaml (command-line flags override these values)", ""]
    for name in FIELDS:
        for line in textwrap.wrap(field_help(name), 116):
            lines.append(f"# {line}")
        value = getattr(options, name)
        lines.append(yaml.safe_dump({name: value}, default_flow_style=False, sort_keys=False).rstrip())
        lines.append("")
    return "\n".join(lines)
