"""The benchmark's --allocator choice: what it puts in a worker's environment, and that "retain" really stops the
page faults of a repeated working set (on glibc, the only C library that reads the setting)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from benchmarks.jobs import ALLOCATORS, allocator_env
from benchmarks.report import allocator_line

# Three "steps" of a 150 MiB working set in 15 MiB blocks, after one to warm up; prints the minor page faults.
REPEATED_WORKING_SET = """
import resource
def step():
    blocks = [bytearray(15 * 2**20) for _ in range(10)]  # zero-filled: every page is touched
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_system_sets_nothing_and_retain_sets_glibc_tunables() -> None:
    assert allocator_env("system", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {}
    retain = allocator_env("retain", {})
    assert retain == ALLOCATORS["retain"] and "glibc.malloc.trim_threshold" in retain["GLIBC_TUNABLES"]


def test_retain_keeps_tunables_the_user_already_set() -> None:
    env = allocator_env("retain", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + ALLOCATORS["retain"]["GLIBC_TUNABLES"]


def test_report_names_the_allocator_and_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert "defaults" in allocator_line("system")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert "glibc.malloc.arena_max=2" in allocator_line("system"), "tunables the workers inherit are reported"
    line = allocator_line("retain")
    assert ALLOCATORS["retain"]["GLIBC_TUNABLES"] in line
    if platform.libc_ver()[0] != "glibc":
        assert "NO EFFECT" in line


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="only glibc reads GLIBC_TUNABLES")
def test_retain_stops_the_faults_of_a_repeated_working_set() -> None:
    def faults(allocator: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env.update(allocator_env(allocator, env))
        proc = subprocess.run([sys.executable, "-c", REPEATED_WORKING_SET], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        return int(proc.stdout)

    pages = 3 * 150 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults("system") > pages // 2, "glibc's defaults give the working set back and fault it in again"
    assert faults("retain") < pages // 100, "retained, the later steps reuse the first step's pages"
