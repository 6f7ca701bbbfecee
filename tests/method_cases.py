"""How each registered method is configured on each tiny model of the contract matrix.

A method joins the matrix by being registered. Its default config is tried on every model; only the cells listed
here differ: a dict of config fields, or NOT_APPLICABLE with the reason (the test then checks that adapting fails
with a peftlab error instead of doing something silently wrong).
"""

from __future__ import annotations

from typing import Any

NOT_APPLICABLE = "not applicable"

# (method id, model name) -> config fields, or (NOT_APPLICABLE, reason)
CASES: dict[tuple[str, str], Any] = {
    ("lora", "mlp"): {"targets": ["fc1", "fc2"]},
    ("lora", "convnet"): {"targets": ["conv1", "conv2"]},
    ("lora", "gpt2"): {"targets": ["c_attn", "c_fc"], "dropout": 0.1, "use_rslora": True},
    ("dora", "mlp"): {"targets": ["fc1", "fc2"]},
    ("dora", "convnet"): {"targets": ["conv1", "conv2", "fc"], "modules_to_save": []},
    ("dora", "bert"): {"targets": "all-linear"},
    ("dora", "gpt2"): {"targets": ["c_attn", "c_fc"]},
    ("full", "gpt2"): {"exclude": ["wte"]},  # tied to lm_head: merging is refused (test_merge_into_tied_weights...)
    ("lora", "bert"): {"targets": ["query", "value", "word_embeddings"], "bias": "lora_only"},
    # ia3 and adapter default to architecture-specific names; plain PyTorch models name their layers.
    ("ia3", "mlp"): {"targets": ["fc1", "fc2"]},  # fc2 is a feed-forward site by name: scales its input
    ("ia3", "convnet"): {"targets": ["conv1", "conv2", "fc"], "feedforward": ["conv2"]},
    ("adapter", "mlp"): {"targets": ["fc1", "fc2"]},
    ("adapter", "convnet"): {"targets": ["conv1", "conv2"]},  # 1x1 conv bottlenecks on the channels
    # Input-side and representation methods need a token sequence (embeddings, attention, transformer blocks).
    ("prompt", "mlp"): (NOT_APPLICABLE, "prompt tuning prepends token embeddings; an MLP has no token input"),
    ("prompt", "convnet"): (NOT_APPLICABLE, "prompt tuning prepends token embeddings; a conv net has no token input"),
    ("prompt", "bert"): {"num_virtual_tokens": 4},
    ("prompt", "gpt2"): {"num_virtual_tokens": 4, "init": "vocab"},
    ("prefix", "mlp"): (NOT_APPLICABLE, "prefix tuning extends attention keys/values; an MLP has no attention"),
    ("prefix", "convnet"): (NOT_APPLICABLE, "prefix tuning extends attention keys/values; a conv net has none"),
    ("prefix", "bert"): {"num_virtual_tokens": 4},
    ("prefix", "gpt2"): {"num_virtual_tokens": 4, "reparameterize": True, "hidden": 16},
    ("loreft", "mlp"): (NOT_APPLICABLE, "LoReFT edits token positions of transformer blocks; an MLP has neither"),
    ("loreft", "convnet"): (NOT_APPLICABLE, "LoReFT edits token positions of transformer blocks; a conv net has none"),
    ("loreft", "bert"): {"r": 2, "positions": "f1+l2"},
    ("loreft", "gpt2"): {"r": 2, "positions": "l1", "variant": "direft", "layers": [1]},
    ("vera", "mlp"): {"targets": ["fc1", "fc2"], "r": 8},
    ("vera", "convnet"): {"targets": ["fc"], "r": 4},
    ("vera", "bert"): {"r": 8},
    ("vera", "gpt2"): {"r": 8},
    ("kasa", "mlp"): {"targets": ["fc1", "fc2"], "r": 4},
    ("kasa", "convnet"): {"targets": ["fc"], "r": 2},
    ("kasa", "gpt2"): (NOT_APPLICABLE, "KaSA truncates nn.Linear weights; GPT-2's layers are Conv1D (as in HF PEFT)"),
    ("adalink", "mlp"): (NOT_APPLICABLE, "AdaLink adapts input embeddings; an MLP has none"),
    ("adalink", "convnet"): (NOT_APPLICABLE, "AdaLink adapts input embeddings; a conv net has none"),
    ("adalink", "gpt2"): {"targets": ["wpe"]},  # wte is tied to lm_head, so merging there is refused
}

# Fields every case gets, to make the adapter non-trivial from the start where the method allows it.
NON_TRIVIAL_INIT: dict[str, dict[str, Any]] = {
    "lora": {"init": "random"},
    "dora": {"init": "random"},
    "kasa": {"init": "random"},
}


def case_fields(method_id: str, model_name: str) -> Any:
    fields = dict(NON_TRIVIAL_INIT.get(method_id, {}))
    case = CASES.get((method_id, model_name), {})
    if isinstance(case, tuple):
        return case
    return {**fields, **case}
