"""Suite-wide settings."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tests' tiny matmuls gain nothing from threads, and on a busy 2-core machine two threads
    per process make each of them many times slower. The real-model tests stay within budget on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def forked() -> multiprocessing.context.BaseContext:
    """Real child processes, forked from a server that has imported tests.io.children (and so torch and peftlab)
    once; a fresh interpreter per child would cost seconds each."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.io.children"])
    return context
