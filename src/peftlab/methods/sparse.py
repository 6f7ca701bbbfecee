"""Sparse fine-tuning: W' = W + M ⊙ Δ, with a fixed mask M keeping a fraction 1 − pruning of W's entries   (e.g.
Ansell et al., 2022, "Composable Sparse Fine-Tuning"; Guo et al., 2021, "Parameter-Efficient Transfer Learning with
Diff Pruning")

Each site stores Δ only at the k = round((1 − pruning) · numel(W)) masked entries: `sparse_values` (k,), trained,
starting at zero, and `sparse_indices` (k,), their flat positions in W, fixed. Files hold just these two tensors, so
their size scales with the density. The forward builds W + scatter(Δ) (one index_add into a copy of W) and runs the
module once with it; measured on a 384×1536 Linear, forward + backward costs about what the plain layer costs, while
adding a second product with a dense Δ took twice as long and torch.sparse 5-15× as long. Merging adds Δ into W.
The mask is chosen at creation by `selection`:
    random     uniformly, from `seed` and the module path;
    magnitude  the largest |W|;
    gradient   the largest |∂L/∂W| summed over a few batches. The adapter then starts without a mask: call
               `select_by_gradient(model, batches)` once, before training (or saving).
Sites: nn.Linear, transformers' Conv1D, nn.Conv1d/2d/3d and nn.Embedding (any module with a 2-D or larger `weight`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core.config import MethodConfig, check, check_range
from peftlab.core.functional import with_weights
from peftlab.core.layer import BaseCall
from peftlab.core.sites import WeightDeltaSite
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterStateError

SELECTIONS = ("random", "magnitude", "gradient")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseFT(MethodConfig):
    """Sparse fine-tuning hyperparameters.

    pruning: the fraction of each weight's entries NOT trained, in [0, 1); density = 1 − pruning.
    targets: default "all-linear" (every Linear/Conv1D except the output head); may name Conv and Embedding layers.
    selection: "random", "magnitude" or "gradient" (then call `select_by_gradient` before training).
    seed: the random mask's seed.
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="sparse", name="Sparse fine-tuning", kind=AttachKind.WEIGHT_DELTA,
        inserted_at="attention / feed-forward (any weight matrix)", form="sparse", integration="addition",
        param_formula="round((1 − pruning)·d_in·d_out)", mergeable=True, paper="Ansell et al. 2022",
        symbols="d_in, d_out: the adapted layer's input and output sizes (times the kernel size for convolutions); "
                "as many integer indices are saved, not trained")
    study_lr: ClassVar[float] = 3e-4
    default_targets: ClassVar = "all-linear"

    pruning: float = 0.8
    selection: str = "random"
    seed: int = 0

    def validate(self) -> None:
        check_range(self.pruning, "pruning", 0.0, 1.0, high_open=True)
        check(self.selection in SELECTIONS, "selection", f"must be one of {SELECTIONS}, got {self.selection!r}")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed",
              f"must be an int, got {self.seed!r}")

    def supports(self, module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return isinstance(weight, nn.Parameter) and weight.dim() >= 2

    def count(self, numel: int) -> int:
        """k, the entries trained in a weight of `numel` entries."""
        return max(1, round((1.0 - self.pruning) * numel))

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        weight = module.weight
        k = self.count(weight.numel())
        if self.selection == "random":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(path.encode()))
            indices = torch.randperm(weight.numel(), generator=generator)[:k]
        elif self.selection == "magnitude":
            indices = top_k(weight.detach().abs(), k)
        else:
            indices = None  # chosen by select_by_gradient
        return SparseDelta(weight, k, indices)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat positions of the k largest scores."""
    return torch.topk(scores.flatten().float(), k, sorted=False).indices


class SparseDelta(WeightDeltaSite):
    """Δ at k fixed entries of the module's weight: `sparse_values` (k,) trained, `sparse_indices` (k,) their flat
    positions."""

    additive = True  # the module's output for W + Δ is base(x) plus its output for Δ alone
    effect_parameters: ClassVar[dict[str, float]] = {"sparse_values": 0.0}

    def __init__(self, weight: torch.Tensor, k: int, indices: torch.Tensor | None) -> None:
        super().__init__()
        index_dtype = torch.int32 if weight.numel() < 2**31 else torch.int64  # int32 halves the saved indices
        self.sparse_values = nn.Parameter(torch.zeros(k, dtype=weight.dtype if weight.is_floating_point() else None))
        self.register_buffer("sparse_indices", torch.zeros(k, dtype=index_dtype))
        self.has_mask = indices is not None
        if indices is not None:
            self.set_mask(indices)

    def set_mask(self, indices: torch.Tensor) -> None:
        """Fix the trained entries (flat positions, sorted here for memory locality)."""
        self.sparse_indices.copy_(indices.sort().values.to(self.sparse_indices.dtype))
        self.has_mask = True

    def _require_mask(self) -> None:
        if not self.has_mask:
            raise AdapterStateError("this sparse adapter uses selection='gradient' and has no mask yet; call "
                                    "peftlab.methods.sparse.select_by_gradient(model, batches) before training or "
                                    "saving")

    def effective(self, weight: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """W + scatter(Δ) as a new tensor, W's shape and dtype."""
        values = self.sparse_values.to(weight.dtype) * sign
        return weight.flatten().index_add(0, self.sparse_indices, values).view_as(weight)  # (numel,) -> W's shape

    def forward(self, x: Any, base: BaseCall) -> Any:
        self._require_mask()
        module = base.module
        if base.is_plain:  # one call with W + Δ
            return with_weights(module, x, self.effective(module.weight), getattr(module, "bias", None))
        # Other adapters run inside: add the module's output for Δ alone (the ops are linear in W; bias excluded).
        delta = self.effective(torch.zeros_like(module.weight))
        result = base(x)
        return result + with_weights(module, x, delta, None).to(result.dtype)

    def merge(self, module: nn.Module) -> None:
        self._require_mask()
        module.weight.copy_(self.effective(module.weight))

    def unmerge(self, module: nn.Module) -> None:
        module.weight.copy_(self.effective(module.weight, sign=-1.0))

    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        self._require_mask()
        return dict(self.state_dict())

    def expected_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """A load supplies the values and the mask, so a site still waiting for its mask can receive one."""
        return dict(self.state_dict())

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        self.load_state_dict(state)
        self.has_mask = True


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    if not isinstance(batch, dict):
        raise TypeError("select_by_gradient: batches that are not dicts of model inputs need a loss_fn(model, batch)")
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise TypeError("select_by_gradient: the model returned no .loss for a batch (include labels), or pass "
                        "loss_fn(model, batch)")
    return loss


def select_by_gradient(model: nn.Module, batches: Iterable[Any],
                       loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                       adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Choose the mask of a selection="gradient" sparse adapter: at each site, the k entries of W with the largest
    |∂L/∂W| summed over `batches`, computed on the base model (the adapter disabled). Call once, before training.

    batches: dicts of model inputs with labels (loss = model(**batch).loss), or anything `loss_fn(model, batch)`
    turns into a scalar loss. Returns the accumulated scores by module path. The model's gradients are not touched.
    """
    config = model.configs.get(adapter_name) if hasattr(model, "configs") else None
    if not isinstance(config, SparseFT) or config.selection != "gradient":
        raise AdapterStateError(f"select_by_gradient needs an AdaptedModel whose adapter {adapter_name!r} is "
                                "SparseFT(selection='gradient', ...)")
    sites = {p: (e.site, e.module) for p, e in model.adapter(adapter_name).sites.items()
             if isinstance(e.site, SparseDelta)}
    if any(bool(site.sparse_values.detach().any()) for site, _ in sites.values()):
        raise AdapterStateError(f"adapter {adapter_name!r} has been trained already; its mask can only be chosen "
                                "before training (start from a new adapter)")
    weights = [module.weight for _, module in sites.values()]
    scores = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    flags = [w.requires_grad for w in weights]
    seen = 0
    try:
        with model.disable_adapters():
            for weight in weights:
                weight.requires_grad_(True)
            for batch in batches:
                loss = loss_fn(model, batch) if loss_fn is not None else _default_loss(model, batch)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for score, grad in zip(scores, grads):
                    if grad is not None:
                        score += grad.detach().abs().float()
                seen += 1
    finally:
        for weight, flag in zip(weights, flags):
            weight.requires_grad_(flag)
    if seen == 0:
        raise ValueError("select_by_gradient: `batches` was empty; pass at least one batch")
    for (site, _), score in zip(sites.values(), scores):
        site.set_mask(top_k(score, site.sparse_values.numel()))
    return dict(zip(sites, scores))


SparseFT.site_types = (SparseDelta,)
