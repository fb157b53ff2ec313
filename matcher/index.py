"""The detection index: instance vectors and detection metadata in Milvus (milvus-lite file or server).

The primary key is the detection id, and writes are upserts: a redelivered record replaces its row with
an identical one, so the gallery never holds a detection twice.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

from pgr.messages import Detection

log = logging.getLogger(__name__)
VECTOR_FIELD = "instance"
_CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_OUTPUT = ["camera", "ts", "frame", "track", "box", "score", "thumbnail", "model", "read_at", "indexed_at"]


@dataclass(frozen=True)
class IndexedDetection:
    """What the index returns for a detection; `score` is the cosine similarity to the query for searches."""

    detection_id: str
    camera_id: str
    timestamp: float
    frame_index: int
    track_id: int
    box: tuple[float, ...]
    det_score: float
    thumbnail: str
    model: str
    read_at: float
    indexed_at: float
    score: float = float("nan")
    s_ins: float = float("nan")
    s_part: float = float("nan")
    s_pixel: float = float("nan")


@dataclass(frozen=True)
class IndexRow:
    """One detection to write: where it was seen, its thumbnail, and the instance vector."""

    detection: Detection
    thumbnail: str
    model: str
    instance: np.ndarray


class DetectionIndex:
    """A Milvus collection of detections. Open one writer per .db file (milvus-lite allows one process)."""

    def __init__(self, uri: str, collection: str = "detections", retries: int = 5) -> None:
        self.uri, self.collection, self.retries = uri, collection, retries
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = self._retry("connect", lambda: MilvusClient(uri))
        self.dim: int | None = None
        if self.client.has_collection(collection):
            self.dim = self._existing_dim()
            self.client.load_collection(collection)

    def _existing_dim(self) -> int:
        info = self.client.describe_collection(self.collection)
        for f in info["fields"]:
            if f["name"] == VECTOR_FIELD:
                return int(f["params"]["dim"])
        raise RuntimeError(f"collection {self.collection} has no {VECTOR_FIELD} field")

    def _create(self, dim: int) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("camera", DataType.VARCHAR, max_length=64)
        schema.add_field("ts", DataType.DOUBLE)
        schema.add_field("frame", DataType.INT64)
        schema.add_field("track", DataType.INT64)
        schema.add_field("box", DataType.JSON)
        schema.add_field("score", DataType.FLOAT)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=1024)
        schema.add_field("model", DataType.VARCHAR, max_length=128)
        schema.add_field("read_at", DataType.DOUBLE)  # when ingest decoded the frame (wall clock)
        schema.add_field("indexed_at", DataType.DOUBLE)  # when this row was written
        params = self.client.prepare_index_params()
        params.add_index(VECTOR_FIELD, index_type="FLAT", metric_type="COSINE")
        self.client.create_collection(self.collection, schema=schema, index_params=params)
        self.client.load_collection(self.collection)
        self.dim = dim

    def upsert(self, rows: list[IndexRow]) -> None:
        """Write rows, replacing any with the same detection id."""
        if not rows:
            return
        dim = rows[0].instance.shape[0]
        if self.dim is None:
            self._create(dim)
        bad = [r.detection.detection_id for r in rows if r.instance.shape != (self.dim,)]
        if bad:
            raise ValueError(f"vectors of {bad[:3]} do not have the index dimension {self.dim}")
        now = time.time()
        data = [
            {
                "id": r.detection.detection_id,
                VECTOR_FIELD: r.instance.astype(np.float32).tolist(),
                "camera": r.detection.camera_id,
                "ts": float(r.detection.timestamp),
                "frame": int(r.detection.frame_index),
                "track": int(r.detection.track_id),
                "box": [float(v) for v in r.detection.box],
                "score": float(r.detection.score),
                "thumbnail": r.thumbnail,
                "model": r.model,
                "read_at": float(r.detection.read_at),
                "indexed_at": now,
            }
            for r in rows
        ]
        self._retry("upsert", lambda: self.client.upsert(self.collection, data))

    def count(self) -> int:
        """Rows in the index."""
        if self.dim is None:
            return 0
        res = self._retry("count", lambda: self.client.query(self.collection, output_fields=["count(*)"]))
        return int(res[0]["count(*)"])

    def get(self, ids: list[str]) -> list[IndexedDetection]:
        """Detections by id (missing ids are left out)."""
        if self.dim is None or not ids:
            return []
        rows = self.client.get(self.collection, ids=ids, output_fields=[*_OUTPUT, VECTOR_FIELD])
        return [_to_detection(r["id"], r) for r in rows]

    def vector(self, det_id: str) -> np.ndarray | None:
        """The stored instance vector of one detection."""
        if self.dim is None:
            return None
        rows = self.client.get(self.collection, ids=[det_id], output_fields=[VECTOR_FIELD])
        return np.asarray(rows[0][VECTOR_FIELD], dtype=np.float32) if rows else None

    def all_ids(self, limit: int = 16384) -> list[str]:
        """Detection ids in the index, at most `limit` (Milvus caps one query's result window)."""
        if self.dim is None:
            return []
        return [
            r["id"]
            for r in self.client.query(self.collection, filter='id != ""', output_fields=["id"], limit=limit)
        ]

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        camera: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexedDetection]:
        """Nearest detections by cosine similarity, optionally filtered by camera and time range."""
        if self.dim is None:
            return []
        if vector.shape != (self.dim,):
            raise ValueError(f"query vector has shape {vector.shape}, the index holds ({self.dim},)")
        filters = []
        if camera is not None:
            if not _CAMERA_ID.match(camera):
                raise ValueError(f"bad camera id {camera!r}")
            filters.append(f'camera == "{camera}"')
        if since is not None:
            filters.append(f"ts >= {float(since)!r}")
        if until is not None:
            filters.append(f"ts <= {float(until)!r}")
        res = self._retry(
            "search",
            lambda: self.client.search(
                self.collection,
                data=[vector.astype(np.float32).tolist()],
                anns_field=VECTOR_FIELD,
                limit=top_k,
                filter=" and ".join(filters),
                output_fields=_OUTPUT,
            ),
        )
        return [_to_detection(h["id"], h["entity"], score=float(h["distance"])) for h in res[0]]

    def close(self) -> None:
        """Close the client; for a milvus-lite file also stop its in-process server, which releases the
        file lock so that another process (the next matcher, a search command) may open it."""
        self.client.close()
        if "://" not in self.uri:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def _retry(self, what: str, fn):
        delay = 0.5
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # pymilvus raises several types for a lost server
                if attempt == self.retries:
                    raise
                log.warning("milvus %s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)


def _to_detection(det_id: str, e: dict, score: float = float("nan")) -> IndexedDetection:
    return IndexedDetection(
        detection_id=det_id,
        camera_id=e["camera"],
        timestamp=float(e["ts"]),
        frame_index=int(e["frame"]),
        track_id=int(e["track"]),
        box=tuple(e["box"]),
        det_score=float(e["score"]),
        thumbnail=e["thumbnail"],
        model=e["model"],
        read_at=float(e["read_at"]),
        indexed_at=float(e["indexed_at"]),
        score=score,
    )
