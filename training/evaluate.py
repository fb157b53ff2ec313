"""Re-ID evaluation: CMC and mAP from a distance matrix, by the standard single-query protocol.

For each query, gallery entries with the query's pid *and* camera are removed (same view); ranks are
over the remaining gallery. CMC counts a hit at rank k if a true match is within the first k; AP is the
mean of precision at each true match's rank. Queries with no valid true match are skipped (and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.datasets import Sample


@dataclass(frozen=True)
class RankResult:
    cmc: np.ndarray  # (max_rank,) fraction of queries with a match within rank k+1
    mAP: float
    num_valid_queries: int

    def rank(self, k: int) -> float:
        return float(self.cmc[k - 1])

    def row(self) -> dict[str, float]:
        """R1, R5, R10 and mAP as fractions, as the JSON reports carry them."""
        return {"R1": self.rank(1), "R5": self.rank(5), "R10": self.rank(10), "mAP": self.mAP}

    def __str__(self) -> str:
        return (
            f"R1 {100 * self.rank(1):.1f}  R5 {100 * self.rank(5):.1f}  R10 {100 * self.rank(10):.1f}  "
            f"mAP {100 * self.mAP:.1f}  ({self.num_valid_queries} queries)"
        )


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> RankResult:
    """CMC and mAP of a (Q, G) distance matrix (smaller is closer); ties keep gallery order."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    order = np.argsort(distmat, axis=1, kind="stable")
    cmc_sum = np.zeros(max_rank)
    aps = []
    for i in range(distmat.shape[0]):
        ranked = order[i]
        keep = ~((g_pids[ranked] == q_pids[i]) & (g_camids[ranked] == q_camids[i]))
        matches = (g_pids[ranked] == q_pids[i])[keep]
        if not matches.any():
            continue
        first = int(np.argmax(matches))
        cmc_sum[first:] += 1  # empty slice when the first match is beyond max_rank
        hits = np.flatnonzero(matches)
        precision_at_hits = np.arange(1, len(hits) + 1) / (hits + 1)
        aps.append(precision_at_hits.mean())
    if not aps:
        raise ValueError("no query has a true match in the gallery")
    return RankResult(cmc=cmc_sum / len(aps), mAP=float(np.mean(aps)), num_valid_queries=len(aps))


def evaluate_samples(distmat: np.ndarray, query: Sequence[Sample], gallery: Sequence[Sample]) -> RankResult:
    """`evaluate_rank` with the pids and cameras taken from the query and gallery samples."""
    return evaluate_rank(
        distmat,
        np.array([s.pid for s in query]),
        np.array([s.pid for s in gallery]),
        np.array([s.camid for s in query]),
        np.array([s.camid for s in gallery]),
    )
