"""Routing: one call of an adapted model with a different adapter per sample (`adapter_names=[...]`, Hugging Face
PEFT's convention, "__base__" for none) or per token (`adapter_groups=` group ids with `group_adapters=` their
adapters: Context-PEFT's y = W x + Σ_c m_c ⊙ s_c B_c A_c x).

A `Routing` holds the distinct adapters of the call (`names`) and an index tensor: (B,) per sample or (B, T) per
token, each entry the position of its adapter in `names`, or -1 for the base model. At each adapted layer the sites
of those adapters run together through their class's `route` (core/sites.py): their tensors are stacked along a new
first axis with one extra slot at the end that does nothing (zeros, or ones for a scale), and every position gathers
its adapter's slot (index -1 is that last slot), so one batched product serves the whole batch, whatever the number
of distinct adapters. Stacks are rebuilt only when an adapter's tensors change (`StackCache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from peftlab.core.context import pending
from peftlab.errors import AdapterStateError

BASE = "__base__"


@dataclasses.dataclass(frozen=True)
class Routing:
    """The adapter of each sample (index (B,)) or token (index (B, T)): names[index], or the base for -1."""

    names: tuple[str, ...]
    index: torch.Tensor

    @property
    def per_token(self) -> bool:
        return self.index.dim() == 2

    def for_batch(self, batch: int) -> Routing:
        """The routing of a call whose batch is `batch`: generate's beam search and sampling repeat each sample
        k times in a row (sample i becomes rows i·k ... i·k + k − 1), and so does the index."""
        rows = self.index.shape[0]
        if rows == batch:
            return self
        if batch % rows:
            raise AdapterStateError(f"adapter routing covers {rows} samples, but the model was called with a batch of "
                                    f"{batch}; pass one adapter name per sample")
        return Routing(self.names, self.index.repeat_interleave(batch // rows, dim=0))

    def on(self, device: torch.device) -> Routing:
        return self if self.index.device == device else Routing(self.names, self.index.to(device))


def per_sample(names: Sequence[str], known: Sequence[str], batch: int | None) -> Routing:
    """The Routing of `adapter_names`: one name per sample, "__base__" for the base model."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise AdapterStateError(f"adapter_names must be a list with one adapter name per sample, got {names!r}")
    if batch is not None and len(names) != batch:
        raise AdapterStateError(f"adapter_names has {len(names)} names, but the batch has {batch} samples; give one "
                                f"name per sample (\"{BASE}\" for the base model)")
    distinct = tuple(dict.fromkeys(n for n in names if n != BASE))
    _check_known(distinct, known)
    position = {name: i for i, name in enumerate(distinct)}
    return Routing(distinct, torch.tensor([position.get(n, -1) for n in names], dtype=torch.long))


def per_token(groups: torch.Tensor, group_adapters: Mapping[int, str] | Sequence[str], known: Sequence[str],
              shape: tuple[int, int] | None) -> Routing:
    """The Routing of `adapter_groups` (B, T) integer group ids and `group_adapters` (group id -> adapter name, or
    a list indexed by group id; "__base__" for the base model)."""
    if not isinstance(groups, torch.Tensor) or groups.dim() != 2 or groups.is_floating_point():
        raise AdapterStateError("adapter_groups must be a (batch, tokens) integer tensor of group ids")
    if shape is not None and tuple(groups.shape) != shape:
        raise AdapterStateError(f"adapter_groups has shape {tuple(groups.shape)}, but the inputs are {shape} "
                                "(batch, tokens)")
    table = dict(enumerate(group_adapters)) if isinstance(group_adapters, Sequence) else dict(group_adapters)
    if isinstance(group_adapters, str) or not all(isinstance(n, str) for n in table.values()):
        raise AdapterStateError("group_adapters must map each group id to an adapter name (a dict or a list)")
    present = {int(g) for g in groups.unique().tolist()}
    missing = sorted(present - set(table))
    if missing:
        raise AdapterStateError(f"adapter_groups uses group ids {missing}, which group_adapters does not name")
    distinct = tuple(dict.fromkeys(table[g] for g in sorted(present) if table[g] != BASE))
    _check_known(distinct, known)
    position = {name: i for i, name in enumerate(distinct)}
    lookup = torch.full((max(present) + 1,), -1, dtype=torch.long)
    for group in present:
        lookup[group] = position.get(table[group], -1)
    return Routing(distinct, lookup[groups.long().cpu()])


@contextlib.contextmanager
def routed(routing: Routing | None) -> Iterator[None]:
    """Within this block, calls of adapted models in this thread are routed by `routing` (None: unchanged)."""
    if routing is None:
        yield
        return
    values = pending()
    previous = values.get("routing")
    values["routing"] = routing
    try:
        yield
    finally:
        values["routing"] = previous


def _check_known(names: Sequence[str], known: Sequence[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterStateError(f"no adapter named {unknown[0]!r}; this model has {list(known)} (and \"{BASE}\" for "
                                "the base model)")


def stack(tensors: Sequence[torch.Tensor | None], fill: float = 0.0, last: torch.Tensor | None = None
          ) -> torch.Tensor:
    """(n + 1, *shape): the tensors padded with `fill` to the largest size along each axis (None: all `fill`),
    plus one last slot for index -1: `last`, or all `fill`."""
    present = [t for t in (*tensors, last) if t is not None]
    shape = [max(t.shape[d] for t in present) for d in range(present[0].dim())]
    out = present[0].new_full((len(tensors) + 1, *shape), fill)
    for i, tensor in enumerate((*tensors, last)):
        if tensor is not None:
            out[(i, *(slice(0, n) for n in tensor.shape))] = tensor
    return out


def pick(stacked: torch.Tensor, index: torch.Tensor, like: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """stacked (n + 1, C) gathered for each position of `like`, shaped to broadcast against it: (B, 1, ..., C) per
    sample, (B, T, C) per token; or (B, C, 1, ...) with feature_dim=1 (convolutions), per sample only."""
    rows = stacked[index]  # (B, C) or (B, T, C)
    if index.dim() == 2:
        return rows
    if feature_dim == 1:
        return rows.view(rows.shape[0], -1, *([1] * (like.dim() - 2)))  # (B, C) -> (B, C, 1, ...)
    return rows.view(rows.shape[0], *([1] * (like.dim() - 2)), -1)  # (B, C) -> (B, 1, ..., C)


def low_rank(x: torch.Tensor, a_stack: torch.Tensor, b_stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """B_i A_i x for the adapter i of each position, from stacks (n + 1, r, d_in) and (n + 1, d_out, r) (scaling
    folded into B; the last slot zero). Per sample: one gather of each sample's factors and two batched products.
    Per token: every adapter's A x at once, masked to the token's own, then one product with all the B's."""
    d_in = x.shape[-1]
    n, d_out, r = a_stack.shape[0] - 1, b_stack.shape[1], a_stack.shape[1]
    if index.dim() == 1:
        x3 = x.reshape(x.shape[0], -1, d_in)  # (B, ..., d_in) -> (B, L, d_in)
        u = torch.bmm(x3, a_stack[index].transpose(1, 2))  # (B, L, r)
        out = torch.bmm(u, b_stack[index].transpose(1, 2))  # (B, L, d_out)
        return out.reshape(*x.shape[:-1], d_out)
    check_token_shape(x, index)
    x2 = x.reshape(-1, d_in)  # (B, T, d_in) -> (N, d_in)
    u = x2 @ a_stack[:n].reshape(n * r, d_in).T  # (N, n·r): every adapter's A x
    u = u.view(-1, n, r) * token_mask(index, n).unsqueeze(-1)  # (N, n, r), zero but the token's adapter
    b_all = b_stack[:n].permute(1, 0, 2).reshape(d_out, n * r)  # (n, d_out, r) -> (d_out, n·r)
    return (u.reshape(-1, n * r) @ b_all.T).view(*x.shape[:-1], d_out)  # (N, d_out) -> (B, T, d_out)


def token_mask(index: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n) one-hot rows of the flattened (B, T) index; a base token's row is all zeros."""
    flat = index.reshape(-1)
    return F.one_hot(flat.clamp(min=0), n).to(torch.get_default_dtype()) * (flat >= 0).unsqueeze(-1)


def check_token_shape(x: torch.Tensor, index: torch.Tensor) -> None:
    if x.dim() < 3 or tuple(x.shape[:2]) != tuple(index.shape):
        raise AdapterStateError(f"adapter_groups routes tokens of shape {tuple(index.shape)}, but a routed layer got "
                                f"an input of shape {tuple(x.shape)} (a pooled or reshaped tensor); route per sample "
                                "(adapter_names) for such models, or leave that layer out of the adapters' targets")


class StackCache:
    """A layer's stacks of adapter tensors, kept between calls and rebuilt only when another set of adapters is
    routed or one of their tensors changed (its version counter moves on every in-place update, an optimiser step
    included). While gradients flow to the tensors the stacks are rebuilt every call, inside the autograd graph."""

    SIZE = 4  # sets of stacks kept per layer (one per site class and routed adapter set)

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[tuple[int, ...], Any]] = {}

    def get(self, sites: Sequence[Any], build: Callable[[], Any], extra: Sequence[torch.Tensor] = ()) -> Any:
        """`build()` for these sites (None entries: absent adapters), or the stacks it built last time; `extra`:
        other tensors the stacks are made of (e.g. projections the sites share)."""
        tensors = [t for site in sites if site is not None for t in (*site.parameters(), *site.buffers())]
        tensors += list(extra)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return build()
        key = tuple(id(site) for site in sites)
        versions = tuple(t._version if not t.is_inference() else -1 for t in tensors)
        found = self._entries.get(key)
        if found is not None and found[0] == versions:
            return found[1]
        value = build()
        if len(self._entries) >= self.SIZE:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (versions, value)
        return value
