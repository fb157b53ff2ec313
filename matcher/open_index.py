"""Open the detection index the config names: the embedded one (`matcher.index: embedded`, the default) or
Milvus by URI (`matcher.index: milvus`, the scale-out path). Both answer the same calls: upsert, get,
search, search_ids, delete, compact, older_than, count, count_by_camera, all_ids, vector, close."""

from __future__ import annotations

from matcher.embedded_index import EmbeddedIndex
from matcher.index import DetectionIndex
from pgr.settings import MatcherSettings

AnyIndex = DetectionIndex | EmbeddedIndex


def open_index(
    matcher: MatcherSettings, dim: int | None = None, model: str | None = None, token: str | None = None
) -> AnyIndex:
    """The configured index. A writer passes the model's `dim` (and name): a missing index is created with
    it and one of another size (or, embedded, another model) is refused with IndexMismatch."""
    if matcher.index == "milvus":
        assert matcher.milvus_uri is not None  # the settings require it
        return DetectionIndex(matcher.milvus_uri, matcher.collection, dim=dim, token=token)
    return EmbeddedIndex(matcher.index_path, dim=dim, model=model)
