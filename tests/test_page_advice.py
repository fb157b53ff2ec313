"""Read-ahead hints over a real memory map: both the batched (process_madvise) and the per-range path."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from matcher import page_advice

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux memory-map advice")


def _mapped(tmp_path: Path) -> tuple[np.ndarray, mmap.mmap]:
    data = np.arange(300_000, dtype=np.int64)
    path = tmp_path / "col.bin"
    data.tofile(path)
    arr = np.asarray(np.memmap(path, dtype=np.int64, mode="r"))
    return data, arr.base._mmap  # type: ignore[union-attr]


@pytest.mark.parametrize("batched", [True, False])
def test_will_need_takes_scattered_ranges_clipped_to_the_map(tmp_path, monkeypatch, batched):
    data, m = _mapped(tmp_path)
    monkeypatch.setitem(page_advice._state, "usable", batched)
    address = np.asarray(np.frombuffer(m, dtype=np.uint8)).__array_interface__["data"][0]
    rows = np.array([0, 7, 4_000, 123_457, 299_999])
    # ends past the map, an empty range and 3,000 ranges (more than one batch of 1,024) are all accepted
    page_advice.will_need(m, address, rows * 8 + 3, rows * 8 + 10_000)
    page_advice.will_need(m, address, np.array([80]), np.array([80]))
    many = np.sort(np.random.default_rng(0).choice(300_000, 3_000, replace=False))
    page_advice.will_need(m, address, many * 8, many * 8 + 8)
    assert np.array_equal(np.frombuffer(m, dtype=np.int64)[rows], data[rows])


def test_a_forked_child_advises_its_own_memory(tmp_path):
    first = page_advice._pidfd()
    if first is None:
        pytest.skip("no pidfd_open on this kernel")

    def pid_of(fd: int) -> int:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
        raise AssertionError("no Pid in fdinfo")

    assert pid_of(first) == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports which process its pidfd names
        try:
            fd = page_advice._pidfd()
            os.write(write, str(pid_of(fd) if fd is not None else -1).encode())
        finally:
            os._exit(0)
    os.close(write)
    named = int(os.read(read, 32))
    os.waitpid(child, 0)
    assert named == child
