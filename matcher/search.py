"""Operator search: embed a person image with the pipeline's extractor, query the index, and re-rank the
candidates progressively with part and pixel features (PGR).

Milvus answers the first stage: its cosine ranking of the instance vectors is the s_ins ranking, so its
top N1 are exactly the candidates progressive retrieval re-ranks with s_part, then the top N2 with s_pixel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from matcher.feature_store import FeatureStore
from matcher.index import DetectionIndex, IndexedDetection
from pgr.images import read_image
from pgr.messages import CropFeatures
from reid.extractor import FeatureExtractor
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval


def search_image(
    index: DetectionIndex,
    extractor: FeatureExtractor,
    image: Path | np.ndarray,
    top_k: int = 10,
    camera: str | list[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    features: FeatureStore | None = None,
    params: RetrievalParams | None = None,
) -> list[IndexedDetection]:
    """Ranked detections most like the person in `image` (a file or a BGR array).

    With a feature store and a PGR extractor the ranking is progressive (score = s2 for the top N2, s1 for
    the rest of the top N1); otherwise it is the instance cosine alone.
    """
    pixels = read_image(image) if isinstance(image, Path) else image
    query = extractor.extract([pixels])[0]
    return search_features(index, query, extractor.name, top_k, camera, since, until, features, params)


def search_features(
    index: DetectionIndex,
    query: CropFeatures,
    model: str,
    top_k: int = 10,
    camera: str | list[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    features: FeatureStore | None = None,
    params: RetrievalParams | None = None,
) -> list[IndexedDetection]:
    """`search_image` for a query already embedded by `model` (an upload or a stored detection's features)."""
    if features is None or query.parts is None:
        hits = index.search(query.instance, top_k=top_k, camera=camera, since=since, until=until)
        require_model(hits, model)
        return hits
    params = params or RetrievalParams()
    hits = index.search(query.instance, top_k=max(params.n1, top_k), camera=camera, since=since, until=until)
    require_model(hits, model)
    stored = [features.load(h.camera_id, h.detection_id) for h in hits]
    usable = [i for i, f in enumerate(stored) if f is not None and f.parts is not None]
    if not usable:
        return hits[:top_k]
    gallery = GalleryFeatures.from_crop_features([stored[i] for i in usable])
    if gallery.pixels.shape[-1] != query.pixels.shape[-1]:
        raise ValueError(
            f"stored pixel features have {gallery.pixels.shape[-1]} dims, the query has "
            f"{query.pixels.shape[-1]}: the index was built with another model setting"
        )
    # the candidates come sorted by s_ins, so progressive retrieval on them (which re-ranks its own top N1
    # and keeps the rest in s_ins order) is progressive retrieval on the whole filtered gallery
    ranked = progressive_retrieval(GalleryFeatures.from_crop_features([query]), gallery, params)
    out = []
    for col, row in enumerate(ranked.indices[0].tolist()):
        out.append(
            replace(
                hits[usable[row]],
                score=float(ranked.score[0, col]),
                s_ins=float(ranked.s_ins[0, col]),
                s_part=float(ranked.s_part[0, col]),
                s_pixel=float(ranked.s_pixel[0, col]),
            )
        )
    # detections without stored parts (indexed by an instance-only model) follow, by instance score
    reranked = set(usable)
    out += [h for i, h in enumerate(hits) if i not in reranked]
    return out[:top_k]


def fuse_rankings(
    rankings: list[list[IndexedDetection]], exclude: set[str] = frozenset()
) -> list[IndexedDetection]:
    """One ranking from several queries' (query expansion): each detection at its best score, best first;
    the `exclude`d ids (results the operator rejected) are left out."""
    best: dict[str, IndexedDetection] = {}
    for hits in rankings:
        for h in hits:
            if h.detection_id not in exclude and (
                h.detection_id not in best or h.score > best[h.detection_id].score
            ):
                best[h.detection_id] = h
    return sorted(best.values(), key=lambda h: -h.score)


class ModelMismatch(ValueError):
    """The index holds features of another model than the one asked to search it."""


def require_model(hits: list[IndexedDetection], model: str) -> None:
    """Refuse to rank features of different models together: every hit must come from `model`."""
    others = Counter(h.model for h in hits if h.model != model)
    if others:
        found = ", ".join(f"{name} ({n} rows)" for name, n in others.most_common())
        raise ModelMismatch(
            f"the index holds features of another model: {found} among the candidates, and this search uses "
            f"{model}; search with the reid settings the index was built with, or index the footage again"
        )


def longest_track_query(
    detections: list[IndexedDetection],
) -> tuple[tuple[str, int], int, IndexedDetection] | None:
    """The longest local track ((camera, track), its length) and the crop in its middle, or None untracked.

    The middle, not the first crop: a track's first crops are often partial or taken just before an ID
    switch, so the tracker's label is least trustworthy there.
    """
    tracks = Counter((d.camera_id, d.track_id) for d in detections if d.track_id >= 0)
    if not tracks:
        return None
    key, n = tracks.most_common(1)[0]
    crops = sorted((d for d in detections if (d.camera_id, d.track_id) == key), key=lambda d: d.frame_index)
    return key, n, crops[len(crops) // 2]
