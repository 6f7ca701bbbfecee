"""Causal-LM tasks (dialogue, arithmetic, a user's prompt/completion file): the loss is on completion tokens only;
metrics are held-out loss, perplexity, and exact match of greedy completions."""

from __future__ import annotations

import math
import string
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftlab.study import models
from peftlab.study.data.examples import Conversation, PromptCompletion
from peftlab.study.data.split import Splits, split
from peftlab.study.errors import StudyError
from peftlab.study.tasks.base import Batch, TaskSpec, chunks, resolve_sizes
from peftlab.train import move_batch

IGNORE = -100


class CausalLMTask:
    """Prompt -> completion fine-tuning. `chat=True` wraps prompts in the tokenizer's chat template.

    metric: "exact_match" (higher is better) or "perplexity" (lower is better). Exact match is computed by greedy
    decoding through the adapted model's own forward (no KV cache, prompts grouped by length so nothing is padded):
    slower than `generate`, but correct for every method, input-side ones included.
    """

    def __init__(self, name: str, pairs: list[PromptCompletion], spec: TaskSpec, *, model_ref: str, test: int,
                 validation: int, chat: bool, metric: str, curve_metric: str, eval_batch_size: int = 16) -> None:
        models.check_model_ref(model_ref, models.CAUSAL_LM_ALIASES, "causal language model")
        models.check_max_length(model_ref, spec.max_length)
        self.name = name
        self.pairs = pairs
        self.spec = spec
        self.model_ref = model_ref
        self.chat = chat
        self.metric = metric
        self.higher_is_better = metric != "perplexity"
        self.curve_metric = curve_metric
        self.test_size, self.validation_size = resolve_sizes(spec, test, validation)
        self.eval_batch_size = eval_batch_size
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = models.load_tokenizer(self.model_ref)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "kind": "causal-lm", "model": self.model_ref, "examples": len(self.pairs),
                "test_size": self.test_size, "validation_size": self.validation_size, "chat": self.chat,
                "input_size": f"max length {self.spec.max_length}"}

    def length(self, example: PromptCompletion | Conversation) -> int:
        if isinstance(example, Conversation):
            return sum(len(content) for _, content in example.messages)
        return len(example.prompt) + len(example.completion)

    def fields_for(self, method_id: str) -> dict[str, Any]:
        return {}

    def build_model(self) -> nn.Module:
        return models.load_causal_lm(self.model_ref)

    def splits(self) -> Splits[PromptCompletion]:
        return split(self.pairs, test=self.test_size, validation=self.validation_size, seed=self.spec.data_seed)

    # --- tokenisation ------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if self.chat and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        else:
            text = prompt
        return tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids_of(self, example: PromptCompletion | Conversation) -> list[int]:
        """The tokens a greedy completion of `example` starts from."""
        if isinstance(example, Conversation):
            return self.tokenizer(self.render(example.messages[: example.last_reply], reply=True),
                                  add_special_tokens=False)["input_ids"]
        return self.prompt_ids(example.prompt)

    def render(self, turns: Sequence[tuple[str, str]], reply: bool = False) -> str:
        """Chat turns as the tokenizer's chat template writes them (`reply`: followed by an assistant header)."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise StudyError(f"the tokenizer of {self.model_ref!r} has no chat template; chat (messages) data needs "
                             "one: use a chat model (e.g. smollm2) or prompt,completion rows")
        messages = [{"role": role, "content": content} for role, content in turns]
        return tok.apply_chat_template(messages, add_generation_prompt=reply, tokenize=False)

    def encode_conversation(self, example: Conversation) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a chat rendered with the chat template, labels on the assistant turns only (their
        text and end-of-turn marker). Rendered prefix by prefix, so each turn's tokens are known; cut at max_length."""
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for i, (role, _) in enumerate(example.messages):
            pieces = [(self.render(example.messages[:i], reply=True), False)] if role == "assistant" else []
            pieces.append((self.render(example.messages[: i + 1]), role == "assistant"))
            for text, trained in pieces:
                if not text.startswith(done):
                    raise StudyError(f"the chat template of {self.model_ref!r} does not render a conversation as "
                                     "a growing text (turn by turn), so the assistant turns cannot be located; use "
                                     "prompt,completion rows")
                segment = self.tokenizer(text[len(done):], add_special_tokens=False)["input_ids"]
                ids += segment
                labels += segment if trained else [IGNORE] * len(segment)
                done = text
        return ids[: self.spec.max_length], labels[: self.spec.max_length]

    def loss_weight(self, batch: Batch) -> int:
        """What `loss` is a mean over: the batch's target tokens."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def encode(self, example: PromptCompletion | Conversation) -> tuple[list[int], list[int]]:
        """(input ids, labels) with the prompt masked out; the prompt is cut from the left to fit max_length."""
        if isinstance(example, Conversation):
            return self.encode_conversation(example)
        completion = self.tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        completion = completion[: self.spec.max_length - 1] + [self.tokenizer.eos_token_id]
        prompt = self.prompt_ids(example.prompt)[-max(1, self.spec.max_length - len(completion)):]
        return prompt + completion, [IGNORE] * len(prompt) + completion

    def collate(self, examples: Sequence[PromptCompletion]) -> Batch:
        encoded = [self.encode(e) for e in examples]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(encoded):  # right padding
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    # --- training and metrics ----------------------------------------------------------------------------------
    def token_losses(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of completion-token NLL, number of completion tokens)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        logits = logits[:, -batch["labels"].shape[1]:]  # input-side methods may prepend virtual positions
        shifted = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(T-1), V)
        targets = batch["labels"][:, 1:].reshape(-1)  # (B*(T-1),)
        nll = torch.nn.functional.cross_entropy(shifted.float(), targets, ignore_index=IGNORE, reduction="sum")
        return nll, (targets != IGNORE).sum()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        nll, count = self.token_losses(model, batch)
        return nll / count.clamp(min=1)

    def infer(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def evaluate(self, model: nn.Module, examples: Sequence[PromptCompletion], device: torch.device, *,
                 final: bool) -> dict[str, float]:
        """Loss and perplexity on every example; exact match when final or when it is the curve metric."""
        nll_sum, count = 0.0, 0
        for chunk in chunks(list(examples), self.eval_batch_size):
            nll, n = self.token_losses(model, move_batch(self.collate(chunk), device))
            nll_sum, count = nll_sum + float(nll), count + int(n)
        loss = nll_sum / max(count, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if final or self.curve_metric == "exact_match":
            metrics["exact_match"] = self.exact_match(model, examples[: self.spec.generation_examples], device)
        return metrics

    def exact_match(self, model: nn.Module, examples: Sequence[PromptCompletion], device: torch.device) -> float:
        """Share of examples whose greedy completion equals the reference (case, spaces and punctuation ignored)."""
        by_length: dict[int, list[tuple[list[int], str]]] = defaultdict(list)
        for example in examples:
            ids = self.prompt_ids_of(example)[-self.spec.max_length:]
            by_length[len(ids)].append((ids, example.completion))
        hits = 0
        for group in by_length.values():
            for chunk in chunks(group, self.eval_batch_size):
                prompts = torch.tensor([ids for ids, _ in chunk], device=device)  # (B, T) all the same length
                outputs = self.greedy(model, prompts)
                hits += sum(normalise(out) == normalise(ref) for out, (_, ref) in zip(outputs, chunk))
        return hits / max(len(examples), 1)

    def greedy(self, model: nn.Module, prompts: torch.Tensor) -> list[str]:
        """Greedy continuations of equal-length prompts, stopped at EOS or `max_new_tokens`."""
        eos = self.tokenizer.eos_token_id
        ids = prompts
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for _ in range(self.spec.max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]  # (B, V)
            token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            ids = torch.cat([ids, token[:, None]], dim=1)  # (B, T+1)
            done |= token == eos
            if bool(done.all()):
                break
        new = ids[:, prompts.shape[1]:]
        return [self.tokenizer.decode([t for t in row.tolist() if t != eos], skip_special_tokens=True) for row in new]


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces: what exact match compares."""
    table = str.maketrans("", "", string.punctuation)
    return " ".join(text.lower().translate(table).split())
