"""Operator search: embed a person image with the pipeline's extractor, query the index, and re-rank the
candidates progressively with part and pixel features (PGR).

The index answers the first stage: its cosine ranking of the instance vectors is the s_ins ranking, so its
top N1 are exactly the candidates progressive retrieval re-ranks with s_part, then the top N2 with s_pixel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from matcher.feature_store import FeatureStore
from matcher.index import IndexedDetection
from matcher.open_index import AnyIndex
from pgr.images import read_image
from pgr.messages import CropFeatures
from pgr.torch_threads import one_torch_thread
from reid.extractor import FeatureExtractor
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval


def search_image(
    index: AnyIndex,
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
    index: AnyIndex,
    query: CropFeatures,
    model: str,
    top_k: int = 10,
    camera: str | list[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    features: FeatureStore | None = None,
    params: RetrievalParams | None = None,
) -> list[IndexedDetection]:
    """`search_image` for a query already embedded by `model` (an upload or a stored detection's features).

    Stage 1 asks the index for ids only; the candidates' instance and part features come from the feature
    store in one read, the pixels of the stage-2 candidates only, and the metadata of the `top_k` shown.
    """
    if features is None or query.parts is None:
        hits = index.search(query.instance, top_k=top_k, camera=camera, since=since, until=until)
        require_model(hits, model)
        return hits
    params = params or RetrievalParams.search_defaults()
    found = index.search_ids(query.instance, max(params.n1, top_k), camera, since, until)
    require_models(found.models, model)
    stored = features.load_rows(found.ids, pixels=False)
    if stored is None or not stored.found.any():
        return _metadata(index, found.ids[:top_k], found.scores[:top_k].tolist())
    usable = np.flatnonzero(stored.found)
    if stored.parts.shape[-1] != query.parts.shape[-1]:
        raise ValueError(
            f"stored part features have {stored.parts.shape[-1]} dims, the query has "
            f"{query.parts.shape[-1]}: the index was built with another model setting"
        )
    usable_ids = [found.ids[i] for i in usable]
    g = len(usable)
    gallery = GalleryFeatures(
        instances=torch.from_numpy(stored.instances),
        parts=torch.from_numpy(stored.parts),
        visibility=torch.from_numpy(stored.visibility),
        pixels=torch.zeros((g, 0, query.pixels.shape[-1])),  # loaded for the stage-2 candidates only
        pixel_coords=torch.zeros((g, 0, 2), dtype=torch.int16),
        pixel_mask=torch.zeros((g, 0), dtype=torch.bool),
    )

    def pixels_of(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = features.load_rows([usable_ids[r] for r in rows])
        if loaded.pixels.shape[-1] != query.pixels.shape[-1]:
            raise ValueError(
                f"stored pixel features have {loaded.pixels.shape[-1]} dims, the query has "
                f"{query.pixels.shape[-1]}: the index was built with another model setting"
            )
        return torch.from_numpy(loaded.pixels), torch.from_numpy(loaded.pixel_mask)

    # the candidates come sorted by s_ins, so progressive retrieval on them (which re-ranks its own top N1
    # and keeps the rest in s_ins order) is progressive retrieval on the whole filtered gallery
    queries = GalleryFeatures.from_crop_features([query])
    with one_torch_thread():
        ranked = progressive_retrieval(queries, gallery, params, pixels_of)
    order = [usable_ids[r] for r in ranked.indices[0].tolist()]
    scores = {name: getattr(ranked, name)[0].tolist() for name in ("score", "s_ins", "s_part", "s_pixel")}
    # detections without stored parts (indexed by an instance-only model) follow, by instance score
    reranked = set(usable.tolist())
    rest = [i for i in range(len(found.ids)) if i not in reranked]
    ids = (order + [found.ids[i] for i in rest])[:top_k]
    col = {det_id: c for c, det_id in enumerate(order[:top_k])}
    instance_score = {found.ids[i]: float(found.scores[i]) for i in rest}
    out = []
    for h in index.get(ids):
        c = col.get(h.detection_id)
        if c is None:
            out.append(replace(h, score=instance_score[h.detection_id]))
        else:
            stage = int(ranked.stage[0, c])
            out.append(replace(h, stage=stage, **{name: float(v[c]) for name, v in scores.items()}))
    rank = {det_id: r for r, det_id in enumerate(ids)}
    return sorted(out, key=lambda h: rank[h.detection_id])


def _metadata(index: AnyIndex, ids: list[str], scores: list[float]) -> list[IndexedDetection]:
    """The detections with these ids, in this order, carrying these scores."""
    score = dict(zip(ids, scores, strict=True))
    by_id = {h.detection_id: h for h in index.get(ids)}
    return [replace(by_id[i], score=score[i]) for i in ids if i in by_id]


def fuse_rankings(
    rankings: list[list[IndexedDetection]], exclude: set[str] = frozenset()
) -> list[IndexedDetection]:
    """One ranking from several queries' (query expansion): each detection at its best score, best first;
    the `exclude`d ids (results the operator rejected) are left out. Scores are comparable within a
    retrieval stage only (stage 3's s3 is on another scale than s2 or s1), so a later stage ranks first."""
    best: dict[str, IndexedDetection] = {}
    for hits in rankings:
        for h in hits:
            if h.detection_id not in exclude and (
                h.detection_id not in best or _placing(h) > _placing(best[h.detection_id])
            ):
                best[h.detection_id] = h
    return sorted(best.values(), key=_placing, reverse=True)


def _placing(h: IndexedDetection) -> tuple[int, float]:
    return h.stage, h.score


class ModelMismatch(ValueError):
    """The index holds features of another model than the one asked to search it."""


def require_model(hits: list[IndexedDetection], model: str) -> None:
    """Refuse to rank features of different models together: every hit must come from `model`."""
    require_models([h.model for h in hits], model)


def require_models(models: list[str], model: str) -> None:
    """`require_model` for the models of a first-stage answer."""
    others = Counter(m for m in models if m != model)
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
