"""The PEFT-Ref typology: how a method touches the model, and the properties users compare methods by."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AttachKind(str, enum.Enum):
    """The five ways a PEFT method can touch a frozen base model."""

    WEIGHT_DELTA = "weight delta"  # y = base(x) + f(x; θ), equivalent to W + ΔW(θ)
    INSERTED_MODULE = "inserted module"  # h <- h + g(h; θ), sequential or parallel to a sublayer
    INPUT_SIDE = "input side"  # virtual tokens, key/value prefixes
    REPRESENTATION = "representation"  # edits hidden states at chosen positions and layers
    SELECTION = "selection"  # trains a chosen subset of existing parameters


@dataclass(frozen=True)
class MethodCard:
    """What `peftlab methods` prints for a method: its PEFT-Ref properties, derived from nowhere else.

    `param_formula` gives the trainable parameter count at one site, in the symbols of `symbols`.
    """

    id: str
    name: str
    kind: AttachKind
    inserted_at: str  # embeddings, attention, feed-forward, residual stream, head, any layer with a bias...
    form: str  # low-rank, vector, bottleneck MLP, prompt matrix, sparse, dense
    integration: str  # scaled addition, multiplication, concatenation, replacement
    param_formula: str
    mergeable: bool
    paper: str = ""
    symbols: str = "d_in, d_out: the adapted layer's input and output sizes"

    def row(self) -> dict[str, str]:
        """The card as one row of the typology table."""
        return {
            "id": self.id,
            "method": self.name,
            "attach kind": self.kind.value,
            "inserted at": self.inserted_at,
            "form": self.form,
            "integration": self.integration,
            "params per site": self.param_formula,
            "mergeable": "yes" if self.mergeable else "no",
        }
