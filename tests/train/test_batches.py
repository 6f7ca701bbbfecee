"""The data order of training: resumable from its state, and the same examples per step on any number of processes
and accumulation steps."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.train.batches import BatchOrder, MicroBatches, split_batch


def _order(length: bool = False) -> BatchOrder:
    sizes = [(i * 7) % 13 for i in range(50)]
    return BatchOrder(50, 8, torch.Generator().manual_seed(3), length=sizes.__getitem__ if length else None)


@pytest.mark.parametrize("length", [False, True], ids=["random", "length-grouped"])
def test_a_restored_order_continues_with_the_same_batches(length: bool) -> None:
    straight = _order(length)
    expected = [straight.next_batch() for _ in range(20)]  # 6 batches an epoch: crosses three epoch ends
    first = _order(length)
    head = [first.next_batch() for _ in range(8)]
    state = first.state_dict()
    resumed = _order(length)
    resumed.load_state_dict(state)
    assert head + [resumed.next_batch() for _ in range(12)] == expected


def test_processes_and_accumulation_share_out_the_same_examples() -> None:
    batch = list(range(8))
    one = split_batch(batch, accumulation=1, rank=0, world_size=1)
    two = [split_batch(batch, accumulation=2, rank=r, world_size=2) for r in range(2)]
    assert one == [batch]
    assert sorted(i for rank in two for micro in rank for i in micro) == batch
    with pytest.raises(PeftlabError, match="multiple of 6"):
        split_batch(batch, accumulation=3, rank=0, world_size=2)


def test_micro_batches_refuse_a_batch_size_that_does_not_split() -> None:
    with pytest.raises(PeftlabError, match="multiple of 3"):
        MicroBatches(list(range(50)), _order(), list, accumulation=3)
