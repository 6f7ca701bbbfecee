"""AdapterPool: adapters load on demand, the least recently used are evicted beyond max_loaded, and a mixed batch
gives each request the output of its own adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab
from tests.tiny_models import tiny_llama


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_llama().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve users' LoRA adapters (folder names that are not identifiers), each trained-looking (random)."""
    root = tmp_path_factory.mktemp("users")
    for i in range(12):
        torch.manual_seed(100 + i)
        model = peftlab.adapt(_base(), peftlab.LoRA(r=2 + i % 3, targets="all-linear", init="random"))
        model.save(root / f"user-{i:03d}")
    return root


def test_requests_get_their_own_adapter_and_memory_stays_bounded(folder: Path) -> None:
    pool = peftlab.AdapterPool(_base(), folder, max_loaded=4)
    ids = torch.randint(2, 100, (6, 5), generator=torch.Generator().manual_seed(1))
    rounds = [["user-000", "user-001", "__base__", "user-002", "user-000", "user-003"],
              ["user-004", "user-005", "user-006", "user-004", "user-005", "user-006"],
              ["user-000", "user-011", "user-000", "user-011", "__base__", "user-007"]]
    for names in rounds:
        with torch.no_grad():
            mixed = pool(names, input_ids=ids).logits
        assert len(pool.loaded) <= 4
        for i, name in enumerate(names):
            reference = _base() if name == "__base__" else peftlab.load(_base(), folder / name)
            with torch.no_grad():
                alone = reference.eval()(input_ids=ids[i:i + 1]).logits
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=1e-5)
    assert pool.stats.loads == 10 and pool.stats.evictions == 6
    assert pool.loaded == ["user-000", "user-011", "user-007"][-3:] or len(pool.loaded) == 4
    assert pool.loaded_bytes() > 0


def test_bad_requests_are_refused_before_loading(folder: Path) -> None:
    pool = peftlab.AdapterPool(_base(), folder, max_loaded=2)
    ids = torch.randint(2, 100, (3, 4))
    with pytest.raises(peftlab.AdapterStateError, match="no adapter named 'nobody'"):
        pool(["user-000", "nobody", "user-001"], input_ids=ids)
    with pytest.raises(peftlab.AdapterStateError, match="needs 3 different adapters, more than max_loaded=2"):
        pool(["user-000", "user-001", "user-002"], input_ids=ids)
    assert pool.stats.loads == 0
    with pytest.raises(peftlab.AdapterStateError, match="max_loaded=0"):
        peftlab.AdapterPool(_base(), folder, max_loaded=0)
    with pytest.raises(peftlab.AdapterLoadError, match="holds no adapter folders"):
        peftlab.AdapterPool(_base(), folder / "user-000")
