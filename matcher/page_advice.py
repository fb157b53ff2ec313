"""Ask the kernel to read many scattered ranges of a memory map ahead, in as few system calls as it allows.

Loading the candidates of one search touches ~3,000 small ranges (a row of each column per candidate). One
`madvise(MADV_WILLNEED)` per range costs about a microsecond of Python each even when every page is already
cached, a third of the whole load (BENCHMARKS.md, "Search"). Linux's `process_madvise` (5.10; WILLNEED since
5.12; no privilege needed on one's own process since 6.13) takes up to 1,024 ranges in one call. Where it is
missing or refused, each range gets its own `madvise`, as before.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

_SYS_PROCESS_MADVISE = 440  # the same number on every Linux architecture (added after the tables merged)
_IOV_MAX = 1024
_state: dict[str, object] = {"pid": None, "pidfd": None, "usable": sys.platform == "linux", "libc": None}


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
    if _state["libc"] is None:
        _state["libc"] = ctypes.CDLL(None, use_errno=True)
    libc: ctypes.CDLL = _state["libc"]  # type: ignore[assignment]
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


def will_need(m: mmap.mmap, address: int, starts: np.ndarray, stops: np.ndarray) -> None:
    """Ask for the byte ranges [start, stop) of map `m` (mapped at `address`) to be read ahead; starts are
    rounded down to a page and stops clipped to the map."""
    if not hasattr(mmap, "MADV_WILLNEED"):
        return
    page = mmap.PAGESIZE
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
