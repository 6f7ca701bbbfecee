"""BA-LoRA: L = λ_c L_CR + λ_d L_DR + λ_s L_SVDR, added to a LoRA model's task loss
(Chang et al., 2024, "BA-LoRA: Bias-Alleviating Low-Rank Adaptation to Mitigate Catastrophic Inheritance in Large
Language Models")

With F the fine-tuned model's outputs and G the frozen base model's on the same inputs (computed without gradients,
in the same call, by routing every sample to the base):
    consistency  L_CR   sequence outputs (B, C): mean_i ‖F_i/‖F_i‖ − G_i/‖G_i‖‖²  (normalised MSE);
                        token logits (B, T, V): mean over real tokens of KL(softmax G_t ‖ softmax F_t)
    diversity    L_DR   (1/h) Σ_{j≠k} Cov(H)²_jk, the off-diagonal covariance of the output features H (N, h) over
                        the batch (N real samples or tokens; H: the last hidden states when the output has them,
                        else F) — decorrelates the features against representation collapse
    SVD          L_SVDR −Σ_{i≤k} σ_i(H) / Σ_i σ_i(H): the share of the k largest singular values of H, maximised
                        (a robust low-rank output)
Usable with weight-delta adapters that route per sample (LoRA, DoRA, VeRA, IA3, ...); an input-side adapter (prompt
or prefix tuning) would change the inputs the frozen pass sees, so it is refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from peftlab.core.context import CallContext
from peftlab.core.objectives import Objective
from peftlab.core.routing import BASE
from peftlab.errors import AdapterStateError, ConfigError
from peftlab.objectives.deft import real_tokens

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel


class BALoRA(Objective):
    """The three regularisers. consistency / diversity / svd: λ_c, λ_d, λ_s (0 turns a term off). top_k: k."""

    def __init__(self, consistency: float = 0.5, diversity: float = 0.01, svd: float = 0.01, top_k: int = 4) -> None:
        super().__init__()
        for name, value in (("consistency", consistency), ("diversity", diversity), ("svd", svd)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"BALoRA {name}={value!r} must be a finite number >= 0")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConfigError(f"BALoRA top_k={top_k!r} must be an integer >= 1")
        self.weights = {"consistency": float(consistency), "diversity": float(diversity), "svd": float(svd)}
        self.top_k = top_k
        self._model: list[AdaptedModel] = []  # a plain reference, not a submodule

    def attach(self, model: AdaptedModel) -> None:
        self._model = [model]

    def detach(self) -> None:
        self._model = []

    def begin(self, call: CallContext, kwargs: dict[str, Any]) -> None:
        if call.prepared or call.routed_prepared:
            raise AdapterStateError("BA-LoRA compares with the frozen model on the same inputs, which an input-side "
                                    "adapter (prompt or prefix tuning) rewrites; use it with weight-delta adapters")
        if self.weights["diversity"] or self.weights["svd"]:
            kwargs.setdefault("output_hidden_states", True)
        call.scratch(self)["inputs"] = dict(kwargs)

    def end(self, call: CallContext, output: Any) -> None:
        inputs = call.scratch(self).get("inputs")
        logits = getattr(output, "logits", output if isinstance(output, torch.Tensor) else None)
        if inputs is None or not isinstance(logits, torch.Tensor):
            return
        mask = real_tokens(inputs) if logits.dim() == 3 else None
        hidden = getattr(output, "hidden_states", None)
        features = hidden[-1] if hidden else logits
        rows = _rows(features, mask)  # (N, h)
        terms = []
        if self.weights["consistency"]:
            terms.append(self.weights["consistency"] * self._consistency(logits, inputs, mask))
        if self.weights["diversity"]:
            terms.append(self.weights["diversity"] * diversity(rows))
        if self.weights["svd"]:
            terms.append(self.weights["svd"] * svd_share(rows, self.top_k))
        call.losses.extend(terms)

    def _consistency(self, logits: torch.Tensor, inputs: dict[str, Any], mask: torch.Tensor | None) -> torch.Tensor:
        model = self._model[0]
        frozen_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "output_hidden_states")}
        with torch.no_grad():
            frozen = model(**frozen_inputs, adapter_names=[BASE] * logits.shape[0])
        return consistency(logits, getattr(frozen, "logits", frozen), mask)


def _rows(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(N, h): one row per sample of (B, h) outputs, or per real token of (B, T, h) ones."""
    if values.dim() == 2:
        return values.float()
    flat = values.float().reshape(-1, values.shape[-1])  # (B, T, h) -> (B·T, h)
    if mask is None or tuple(mask.shape) != tuple(values.shape[:2]):
        return flat
    return flat[mask.reshape(-1).bool()]


def consistency(fine_tuned: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_CR: normalised MSE for (B, C) outputs, token-averaged KL(frozen ‖ fine-tuned) for (B, T, V) logits."""
    if fine_tuned.dim() == 2:
        return (F.normalize(fine_tuned.float(), dim=-1) - F.normalize(frozen.float(), dim=-1)).pow(2).sum(-1).mean()
    f_rows, g_rows = _rows(fine_tuned, mask), _rows(frozen, mask)  # (N, V)
    return F.kl_div(F.log_softmax(f_rows, dim=-1), F.log_softmax(g_rows, dim=-1), log_target=True,
                    reduction="batchmean")


def diversity(rows: torch.Tensor) -> torch.Tensor:
    """L_DR: (1/h) Σ_{j≠k} Cov_jk² of rows (N, h) over N (zero for N < 2)."""
    if rows.shape[0] < 2:
        return rows.new_zeros(())
    centred = rows - rows.mean(0, keepdim=True)
    cov = centred.T @ centred / (rows.shape[0] - 1)  # (h, h)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / rows.shape[1]


def svd_share(rows: torch.Tensor, top_k: int) -> torch.Tensor:
    """L_SVDR: −(Σ of the top_k singular values of rows (N, h)) / (Σ of all of them)."""
    sigma = torch.linalg.svdvals(rows)
    return -sigma[:top_k].sum() / sigma.sum().clamp(min=1e-12)
