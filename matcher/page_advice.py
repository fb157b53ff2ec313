"""Ask the kernel to read many scattered ranges of a memory map ahead, in as few system calls as it allows.

Loading the candidates of one search touches ~3,000 small ranges (a row of each column per candidate). One
`madvise(MADV_WILLNEED)` per range costs about a microsecond of Python each even when every page is already
cached, a third of the whole load (BENCHMARKS.md, "Search"). Linux's `process_madvise` (5.10; WILLNEED since
5.12; no privilege needed on one's own process since 6.13) takes up to 1,024 ranges in one call. Where it is
missing or refused, each range gets its own `madvise`, as before.

Even batched, the advice costs the kernel a walk per range when every page is already cached (4-7 ms for
1,000 candidates at 1M rows, all cached). So a few of the ranges, spread over the request, are first
checked with `mincore`: when all of them are in the page cache, the rest are taken to be too (they are
rows of the same files, cached or dropped together by how much memory the machine has) and nothing is
advised. A wrong guess costs page faults, never a wrong row.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

_SYS_PROCESS_MADVISE = 440  # the same number on every Linux architecture (added after the tables merged)
_IOV_MAX = 1024
_PROBES = 4  # ranges checked with mincore before advising
_state: dict[str, object] = {
    "pid": None,
    "pidfd": None,
    "usable": sys.platform == "linux",
    "libc": None,
    "mincore": None,
}


def _pidfd() -> int | None:
    """A pidfd of this process (opened again after a fork: the parent's would advise the parent)."""
    if _state["pid"] != os.getpid():
        try:
            _state["pidfd"] = os.pidfd_open(os.getpid())
        except (AttributeError, OSError):
            _state["usable"] = False
            return None
        _state["pid"] = os.getpid()
    return _state["pidfd"]  # type: ignore[return-value]


def _process_madvise(address: int, starts: np.ndarray, stops: np.ndarray) -> bool:
    """WILLNEED over [start, stop) byte ranges of the map at `address` with process_madvise; False when the
    kernel does not offer it to this process (then never tried again: the caller falls back to madvise).
    A hint: a later batch that fails is not reported."""
    pidfd = _pidfd()
    if pidfd is None:
        return False
    libc = _libc()
    iov = np.empty((len(starts), 2), np.uint64)
    iov[:, 0] = address + starts
    iov[:, 1] = stops - starts
    for i in range(0, len(iov), _IOV_MAX):
        chunk = np.ascontiguousarray(iov[i : i + _IOV_MAX])
        done = libc.syscall(
            ctypes.c_long(_SYS_PROCESS_MADVISE),
            ctypes.c_int(pidfd),
            chunk.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_size_t(len(chunk)),
            ctypes.c_int(mmap.MADV_WILLNEED),
            ctypes.c_uint(0),
        )
        if done < 0 and i == 0:  # ENOSYS, EPERM (before 6.13 without CAP_SYS_NICE), EINVAL (no WILLNEED)
            _state["usable"] = False
            return False
    return True


def _libc() -> ctypes.CDLL:
    if _state["libc"] is None:
        _state["libc"] = ctypes.CDLL(None, use_errno=True)
    return _state["libc"]  # type: ignore[return-value]


def _all_cached(address: int, offsets: list[int]) -> bool:
    """Whether the pages at these (page-aligned) offsets of the map at `address` are in memory (mincore)."""
    if _state.get("mincore") is None:
        fn = _libc().mincore
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        _state["mincore"] = fn
    mincore, flag = _state["mincore"], ctypes.c_ubyte()
    for offset in offsets:
        if mincore(address + offset, 1, ctypes.byref(flag)) != 0 or not flag.value & 1:  # type: ignore[operator]
            return False
    return True


def will_need(m: mmap.mmap, address: int, starts: np.ndarray, stops: np.ndarray) -> None:
    """Ask for the byte ranges [start, stop) of map `m` (mapped at `address`) to be read ahead, unless a few
    probed ones show them cached already; starts are rounded down to a page and stops clipped to the map."""
    if not hasattr(mmap, "MADV_WILLNEED") or not len(starts):
        return
    page = mmap.PAGESIZE
    if sys.platform == "linux":
        picks = np.asarray(starts)[:: max(1, len(starts) // _PROBES)][:_PROBES].tolist()
        if _all_cached(address, [int(p) // page * page for p in picks if p < len(m)]):
            return
    starts = np.asarray(starts, np.int64) // page * page
    stops = np.minimum(np.asarray(stops, np.int64), len(m))
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if not len(starts):
        return
    if _state["usable"] and _process_madvise(address, starts, stops):
        return
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        m.madvise(mmap.MADV_WILLNEED, a, b - a)


_MADV_POPULATE_READ = 22  # Linux 5.14: fault every page in (from the disk if need be) and map it


def populate(m: mmap.mmap, address: int) -> None:
    """Map every page of `m` into this process now, reading from the disk what is not cached: later reads
    of it take no page fault, and a mapped page is kept by a kernel that reclaims idle page cache. Where
    MADV_POPULATE_READ is missing, one byte of each page is read instead (the same effect, slower)."""
    if not len(m):
        return
    if sys.platform == "linux":
        if _libc().madvise(ctypes.c_void_p(address), ctypes.c_size_t(len(m)), _MADV_POPULATE_READ) == 0:
            return
    int(np.frombuffer(m, np.uint8)[:: mmap.PAGESIZE].sum())
