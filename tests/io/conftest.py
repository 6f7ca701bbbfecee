"""Shared fixtures of the io tests."""

from __future__ import annotations

import multiprocessing

import pytest


@pytest.fixture(scope="session")
def forked() -> multiprocessing.context.BaseContext:
    """Real child processes, forked from a server that has imported tests.io.children (and so torch and peftlab)
    once; a fresh interpreter per child would cost seconds each."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.io.children"])
    return context
