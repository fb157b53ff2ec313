"""PK batches: P distinct identities x K images each, deterministic given (seed, epoch).

Every identity's images are shuffled and cut into chunks of K (an identity with fewer than K images, or a
last short chunk, is filled up by sampling its images with replacement). Batches are then drawn greedily:
P distinct identities that still have chunks, one chunk from each, until fewer than P identities are left.
One epoch therefore sees (almost) every training image once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator that depends only on (seed, epoch, stream)."""
    return np.random.default_rng([seed, epoch, stream])


def pk_batches(
    pids: Sequence[int], p: int, k: int, seed: int, epoch: int, max_batches: int | None = None
) -> list[list[int]]:
    """Batches of P*K sample indices (P distinct ids, K consecutive indices per id) for one epoch."""
    rng = epoch_rng(seed, epoch)
    by_pid: dict[int, list[int]] = {}
    for i, pid in enumerate(pids):
        by_pid.setdefault(int(pid), []).append(i)
    if len(by_pid) < p:
        raise ValueError(f"{len(by_pid)} identities in the training set, a PK batch needs P = {p}")
    chunks: dict[int, list[list[int]]] = {}
    for pid in sorted(by_pid):
        idx = rng.permutation(np.array(by_pid[pid]))
        short = (-len(idx)) % k
        if short:
            idx = np.concatenate([idx, rng.choice(by_pid[pid], size=short, replace=True)])
        chunks[pid] = [idx[j : j + k].tolist() for j in range(0, len(idx), k)]
    batches: list[list[int]] = []
    available = sorted(chunks)
    while len(available) >= p and (max_batches is None or len(batches) < max_batches):
        chosen = rng.choice(len(available), size=p, replace=False)
        batch: list[int] = []
        for c in chosen:
            batch.extend(chunks[available[c]].pop())
        batches.append(batch)
        available = [pid for pid in available if chunks[pid]]
    return batches
