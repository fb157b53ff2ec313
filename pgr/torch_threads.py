"""Small torch work on one thread: a handful of small tensor operations (one query's re-ranking, the PGR
heads over a few crops' maps) run several times slower on two threads than on one when another stage keeps
the second core busy, because each operation waits for its slower thread (BENCHMARKS.md, Search; RESULTS.md,
IDENTITIES, twelfth session: the heads over one crop's map 11.6 ms on two threads, 2.4 ms on one).

torch's thread count is the process's, so nested or concurrent users (the matcher and the re-ID stage as
threads of one process) share one count of users: the first in sets one thread, the last out restores it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_lock = threading.Lock()
_users = 0
_restore = 1


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block."""
    global _users, _restore
    with _lock:
        if _users == 0:
            _restore = torch.get_num_threads()
            torch.set_num_threads(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                torch.set_num_threads(_restore)
