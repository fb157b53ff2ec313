"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of a query's final top candidates among themselves.

The original re-ranks a query against the whole gallery with the gallery-to-gallery distances of every
pair, which a search over millions of stored detections cannot afford. Here the set is the query and its
top n3 candidates after progressive retrieval: a candidate's k-reciprocal neighbours are looked for among
the other candidates only, so the cost is O(n3^2) per query whatever the gallery size.

A candidate's neighbourhood is encoded as a vector over the set (Gaussian weights exp(-d) on its
k1-reciprocal neighbours, expanded with the k1/2-reciprocal neighbours of those that share two thirds of
theirs), averaged over its k2 nearest neighbours (local query expansion); the Jaccard distance of two
encodings measures how much their neighbourhoods agree. The final distance is
d3 = a3 d + (1 - a3) d_jaccard, d being the progressive distance, normalised per column as in the paper.
"""

from __future__ import annotations

import torch


def _reciprocal(rank: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n, n) bool: j is among i's k + 1 nearest (i itself included) and i among j's."""
    b, n, _ = rank.shape
    near = torch.zeros(b, n, n, dtype=torch.bool, device=rank.device)
    near.scatter_(2, rank[:, :, : min(k + 1, n)], True)
    return near & near.transpose(1, 2)


def reciprocal_distance(sim: torch.Tensor, k1: int, k2: int, a3: float) -> torch.Tensor:
    """d3 from the query (row 0) to each candidate (rows 1..n-1), (B, n - 1).

    sim (B, n, n): similarities in [0, 1] within each set (the query first), symmetric, 1 on the diagonal.
    """
    dist = 2 - 2 * sim.float()
    dist = dist / dist.amax(dim=1, keepdim=True).clamp_min(1e-12)
    rank = torch.argsort(dist, dim=2, stable=True)
    near = _reciprocal(rank, k1).float()
    half = _reciprocal(rank, max(1, round(k1 / 2))).float()
    shared = torch.bmm(near, half.transpose(1, 2))  # |R(i, k1) & R(j, k1 / 2)|
    expand = (near > 0) & (shared > (2 / 3) * half.sum(dim=2)[:, None, :])
    members = (near > 0) | (torch.bmm(expand.float(), half) > 0)
    weights = members * torch.exp(-dist)
    weights = weights / weights.sum(dim=2, keepdim=True)
    if k2 > 1:
        b, n, _ = weights.shape
        nearest = rank[:, :, : min(k2, n)]
        weights = torch.stack(
            [weights.gather(1, nearest[:, :, t : t + 1].expand(-1, -1, n)) for t in range(nearest.shape[2])]
        ).mean(dim=0)
    overlap = torch.minimum(weights[:, :1, :], weights[:, 1:, :]).sum(dim=2)
    jaccard = 1 - overlap / (2 - overlap)
    return a3 * dist[:, 0, 1:] + (1 - a3) * jaccard
