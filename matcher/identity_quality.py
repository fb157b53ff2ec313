"""How well predicted identities match the true ones, over crops: IDF1 with IDP and IDR (one-to-one matching
of predicted to true identities that maximises the crops they share, Ristani et al. 2016), pairwise
precision and recall (pairs of crops put together), and identities per true identity.

>>> q = identity_quality({"a": 1, "b": 1, "c": 2}, {"a": "x", "b": "y", "c": "y"})
>>> round(q.idf1, 3), q.pair_precision, q.pair_recall
(0.667, 0.0, 0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class IdentityQuality:
    crops: int
    true_identities: int
    predicted_identities: int
    idf1: float
    idp: float
    idr: float
    pair_precision: float
    pair_recall: float
    identities_per_true: float  # predicted identities / true identities

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def identity_quality(truth: dict[str, int], predicted: dict[str, str]) -> IdentityQuality:
    """Compare predicted identities with true ones over the crops both name (by crop id)."""
    crops = sorted(set(truth) & set(predicted))
    if not crops:
        raise ValueError("no crop has both a true and a predicted identity")
    true_ids = sorted({truth[c] for c in crops})
    pred_ids = sorted({predicted[c] for c in crops})
    ti, pi = {t: i for i, t in enumerate(true_ids)}, {p: i for i, p in enumerate(pred_ids)}
    table = np.zeros((len(true_ids), len(pred_ids)), np.int64)
    for c in crops:
        table[ti[truth[c]], pi[predicted[c]]] += 1
    rows, cols = linear_sum_assignment(-table)
    idtp = float(table[rows, cols].sum())
    n = float(len(crops))
    idp = idr = idtp / n  # every crop has a truth and a prediction: both totals are n
    idf1 = 2 * idtp / (2 * n)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) // 2).sum())

    together = pairs(table)
    predicted_pairs = pairs(table.sum(axis=0))
    true_pairs = pairs(table.sum(axis=1))
    return IdentityQuality(
        crops=len(crops),
        true_identities=len(true_ids),
        predicted_identities=len(pred_ids),
        idf1=idf1,
        idp=idp,
        idr=idr,
        pair_precision=together / predicted_pairs if predicted_pairs else 1.0,
        pair_recall=together / true_pairs if true_pairs else 1.0,
        identities_per_true=len(pred_ids) / len(true_ids),
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (NaN for no values)."""
    return float(np.percentile(values, q)) if values else float("nan")
