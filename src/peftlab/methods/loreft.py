"""LoReFT: h ← h + Rᵀ(W h + b − R h) at chosen positions, R ∈ R^{r×d} with orthonormal rows   (Wu et al., 2024,
"ReFT: Representation Finetuning for Language Models")

DiReFT (variant="direft", the paper's cheaper ablation): h ← h + W₂ᵀ(W₁ h + b), without the orthogonality and the
subtraction. (pyreft's `DireftIntervention` keeps an orthonormal R in place of W₂; its `NodireftIntervention` is the
paper's DiReFT, as here.) Both edit the residual stream: each site is a transformer block (BERT encoder.layer.N, Llama
model.layers.N, GPT-2 transformer.h.N) and the edit acts on the block's output hidden states (the first element when
the block returns a tuple), at the first f and the last l real tokens of each sequence ("f1+l1"). Real tokens come
from the attention mask seen by a model-level adapter, so padding on either side is skipped. With a cache (generate),
the positions are those of the prompt: calls continuing a cache are not edited, as in pyreft.
R is kept orthonormal by a QR parametrisation (R = rows of Q in Xᵀ = QU, signs fixed so that R ↦ R), exact at every
step and unaffected by weight decay, which breaks torch's default Householder map for r×d matrices (it reads the
diagonal as ±1 and a decayed -0.99 casts to 0). Site state: proj.weight (R or W₂, r×d), source.weight (W or W₁, r×d),
source.bias (b, r). Not mergeable: the edit depends on the position.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from peftlab.core.config import MethodConfig, check
from peftlab.core.context import CallContext
from peftlab.core.layer import BaseCall
from peftlab.core.model_inputs import bind_arguments, continues_cache, text_config
from peftlab.core.sites import ModelAdapter, RepresentationSite
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterStateError, ConfigError

VARIANTS = ("loreft", "direft")
BLOCKS = r"(.*\.)?(layers|layer|h|blocks|block)\.\d+"  # the blocks of a transformer's layer list
_POSITIONS = re.compile(r"f(\d+)\+l(\d+)|f(\d+)()|()l(\d+)")  # "f3+l2", "f3", "l2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoReFT(MethodConfig):
    """LoReFT / DiReFT hyperparameters.

    r: rank of the edited subspace (>= 1, at most the hidden size). positions: "f<k>+l<k>" (first k and last k real
    tokens; either part may be left out) or a pair (first, last) of counts; stored as the string. variant: "loreft" or
    "direft". layers: the block indices to edit (None: every block). targets: the blocks by name (default: every
    "layers.N" / "layer.N" / "h.N" / "blocks.N" module).
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="loreft", name="LoReFT / DiReFT", kind=AttachKind.REPRESENTATION,
        inserted_at="residual stream (block outputs)",
        form="low-rank (orthonormal R for LoReFT)", integration="addition at chosen positions",
        param_formula="2·r·d + r", mergeable=False, paper="Wu et al. 2024", symbols="r: rank, d: hidden size")
    study_lr: ClassVar[float] = 5e-3
    default_targets: ClassVar = BLOCKS
    size_fields: ClassVar[tuple[str, ...]] = ("r",)

    r: int = 4
    positions: str = "f1+l1"
    variant: str = "loreft"

    def validate(self) -> None:
        check(isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1, "r",
              f"must be an integer >= 1, got {self.r!r}")
        check(self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        self._set("positions", normalise_positions(self.positions))

    @property
    def first(self) -> int:
        return parse_positions(self.positions)[0]

    @property
    def last(self) -> int:
        return parse_positions(self.positions)[1]

    def supports(self, module: nn.Module) -> bool:
        return not isinstance(module, (nn.ModuleList, nn.ModuleDict)) and next(module.parameters(), None) is not None

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> nn.Module:
        return TokenPositions(model, self.first, self.last)

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        assert isinstance(shared, TokenPositions)
        if self.r > shared.hidden_size:
            raise ConfigError(f"r={self.r} exceeds the hidden size {shared.hidden_size} of {path!r}; "
                              f"choose r <= {shared.hidden_size}")
        return ReFTSite(shared.hidden_size, self.r, self.variant == "loreft", shared)


def parse_positions(spec: str) -> tuple[int, int]:
    """"f3+l2" -> (3, 2); "l1" -> (0, 1)."""
    found = _POSITIONS.fullmatch(spec)
    if found is None:
        raise ConfigError(f"positions={spec!r} is not of the form 'f<k>+l<k>' (e.g. 'f1+l1', 'l3', 'f2')")
    groups = [g for g in found.groups() if g is not None]  # the two groups of the alternative that matched
    first, last = (int(g) if g else 0 for g in groups)
    return first, last


def normalise_positions(value: Any) -> str:
    """The canonical string of a positions spec: a string like "f1+l1", or a pair (first, last)."""
    if isinstance(value, str):
        first, last = parse_positions(value.strip().replace(" ", ""))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        first, last = value
    else:
        raise ConfigError(f"positions={value!r} must be a string like 'f1+l1' or a pair (first, last) of counts")
    if first < 0 or last < 0 or first + last == 0:
        raise ConfigError(f"positions={value!r} selects no token; give at least one of first/last >= 1")
    return "+".join(p for p in (f"f{first}" if first else "", f"l{last}" if last else "") if p)


class TokenPositions(ModelAdapter):
    """Model-level adapter without parameters: reads each call's attention mask to find the edited positions."""

    def __init__(self, model: nn.Module, first: int, last: int) -> None:
        super().__init__()
        self.hidden_size = int(text_config(model).hidden_size)
        self.first, self.last = first, last
        object.__setattr__(self, "_model", model)  # a plain reference: not a submodule, not in the state

    def prepare(self, args: tuple, kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        bound = bind_arguments(self._model, args, kwargs)
        mask = bound.get("attention_mask")
        scratch = call.scratch(self)
        scratch["mask"] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        scratch["continues"] = continues_cache(bound, call)
        return args, kwargs

    def selection(self, hidden: torch.Tensor, call: CallContext | None) -> torch.Tensor | None:
        """(B, T) bool: the positions to edit in `hidden` (B, T, d); None when this call is not edited."""
        if call is None:
            raise AdapterStateError("LoReFT's blocks ran outside a call of the adapted model, so the edited "
                                    "positions are unknown; call the model itself, not one of its layers")
        scratch = call.scratch(self)
        if scratch.get("continues"):
            return None
        batch, length = hidden.shape[:2]
        real = torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
        if scratch.get("mask") is not None:
            mask = scratch["mask"].to(hidden.device) != 0
            if mask.shape[0] != batch:
                raise AdapterStateError(f"the attention mask has batch size {mask.shape[0]} but the hidden states "
                                        f"{batch}; call the adapted model itself, not one of its layers")
            # The mask covers cached and new tokens; the new ones are its last columns. Tokens it does not cover
            # (virtual tokens added after this adapter read it) count as real.
            covered = min(length, mask.shape[1])
            real[:, length - covered:] = mask[:, mask.shape[1] - covered:]
        rank = real.long().cumsum(dim=1) - 1  # (B, T): index among the real tokens
        count = real.sum(dim=1, keepdim=True)  # (B, 1)
        return real & ((rank < self.first) | (rank >= count - self.last))


class OrthonormalRows(nn.Module):
    """Parametrisation X (r, d) ↦ the orthonormal rows spanning X's rows (QR of Xᵀ, signs fixed: R ↦ R)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # QR in float32 at least: half-precision QR is missing on CPU and too inexact for orthonormal rows anyway.
        q, upper = torch.linalg.qr(x.T.to(torch.promote_types(x.dtype, torch.float32)))  # (d, r), (r, r)
        signs = torch.sign(torch.diagonal(upper))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return (q * signs).T.to(x.dtype)  # (d, r) -> (r, d)

    def right_inverse(self, rows: torch.Tensor) -> torch.Tensor:
        return rows


class ReFTSite(RepresentationSite):
    """One intervention at one block: source (W, b) and proj (R, orthonormal for LoReFT; W₂ for DiReFT)."""

    def __init__(self, d: int, r: int, orthonormal: bool, positions: TokenPositions) -> None:
        super().__init__()
        self.source = nn.Linear(d, r)
        self.proj = nn.Linear(d, r, bias=False)
        self.orthonormal = orthonormal
        if orthonormal:
            nn.init.orthogonal_(self.proj.weight)
            parametrize.register_parametrization(self.proj, "weight", OrthonormalRows())
        object.__setattr__(self, "_positions", positions)  # shared, owned by the model adapter

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """The added term for hidden states h (..., d)."""
        weight = self.proj.weight  # (r, d)
        low = self.source(h)  # (..., d) -> (..., r)
        if self.orthonormal:
            low = low - h @ weight.T  # W h + b − R h, (..., r)
        return low @ weight  # (..., r) -> (..., d)

    def forward(self, x: Any, base: BaseCall) -> Any:
        out = base(x)
        hidden = out[0] if isinstance(out, tuple) else out
        selected = self._positions.selection(hidden, base.call)
        if selected is None:
            return out
        h = hidden.to(self.source.weight.dtype)
        edited = (h + self.edit(h)).to(hidden.dtype)
        hidden = torch.where(selected.unsqueeze(-1), edited, hidden)  # (B, T, 1) picks per position
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"proj.weight": self.proj.weight.detach(), "source.weight": self.source.weight.detach(),
                "source.bias": self.source.bias.detach()}

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        with torch.no_grad():
            self.source.weight.copy_(state["source.weight"])
            self.source.bias.copy_(state["source.bias"])
            target = self.proj.parametrizations.weight.original if self.orthonormal else self.proj.weight
            target.copy_(state["proj.weight"])


LoReFT.site_types = (ReFTSite,)
LoReFT.model_adapter_type = TokenPositions
