"""The detection index: instance vectors and detection metadata in Milvus (milvus-lite file or server).

The primary key is the detection id, and writes are upserts: a redelivered record replaces its row with
an identical one, so the gallery never holds a detection twice.
"""

from __future__ import annotations

import fcntl
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from matcher.index_check import check_lite_manifests
from pgr.errors import IndexMismatch, IndexUnavailable
from pgr.messages import Detection
from pgr.validation import is_camera_id, is_detection_id

log = logging.getLogger(__name__)
VECTOR_FIELD = "instance"
UNAVAILABLE = 2  # pymilvus's code for a server it cannot reach: worth retrying, it may come back
_ID_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,200}")  # nothing to escape in a filter expression
_OUTPUT = ["camera", "ts", "frame", "track", "box", "score", "thumbnail", "model", "read_at", "indexed_at"]
# vector index types: (build parameters, search parameters)
MILVUS_INDEXES = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 64}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 1024}),
}


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
    stage: int = 0  # for searches, the retrieval stage whose score placed it (reid.retrieval: 3, 2, 1, 0)


@dataclass(frozen=True)
class Candidates:
    """A first-stage answer without the metadata: ids best first, their cosine similarities, and the model
    each row was indexed with."""

    ids: list[str]
    scores: np.ndarray  # (n,) float32
    models: list[str]


@dataclass(frozen=True)
class IndexRow:
    """One detection to write: where it was seen, its thumbnail, and the instance vector."""

    detection: Detection
    thumbnail: str
    model: str
    instance: np.ndarray


class DetectionIndex:
    """A Milvus collection of detections. Open one writer per .db file (milvus-lite allows one process).

    A writer passes `dim`, the configured model's vector size: a missing collection is created with it, an
    existing one of another size is refused (IndexMismatch). A reader (search) passes nothing.
    """

    def __init__(
        self,
        uri: str,
        collection: str = "detections",
        retries: int = 5,
        dim: int | None = None,
        token: str | None = None,
        index_type: str = "FLAT",
    ) -> None:
        self.uri, self.collection, self.retries = uri, collection, retries
        # a new collection's vector index; FLAT is exact (the others for `pgr bench index --milvus-index`)
        self.index_type, self.index_params = index_type, MILVUS_INDEXES[index_type][0]
        self.search_params = MILVUS_INDEXES[index_type][1]
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            if Path(uri).is_dir():
                check_lite_manifests(Path(uri))  # before milvus-lite drops what its manifest lost
        try:
            auth = {"token": token} if token else {}
            self.client = self._retry("connect", lambda: MilvusClient(uri, **auth))
            has = self.client.has_collection(collection)
        except MilvusException as exc:
            raise IndexUnavailable(self._why_unavailable(exc)) from None
        self.dim: int | None = None
        if has:
            self.dim = self._existing_dim()
            if dim is not None and dim != self.dim:
                self.close()
                raise IndexMismatch(
                    f"index {uri} (collection {collection}) holds {self.dim}-d vectors, the configured model "
                    f"makes {dim}-d ones: index into another collection or file, or configure the model it "
                    "was built with"
                )
            self.client.load_collection(collection)
        elif dim is not None:
            self._create(dim)

    def _why_unavailable(self, exc: MilvusException) -> str:
        if "://" in self.uri:
            return f"cannot reach the Milvus server at {self.uri}: {exc.message}"
        if _locked(Path(self.uri)):
            return (
                f"the milvus-lite index {self.uri} is locked by another process (a running matcher or "
                "search): stop it, or serve the file with `milvus-lite server` and use its URI"
            )
        return f"cannot open the milvus-lite index {self.uri}: {exc.message or type(exc).__name__}"

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
        params.add_index(
            VECTOR_FIELD, index_type=self.index_type, metric_type="COSINE", params=self.index_params
        )
        self.client.create_collection(self.collection, schema=schema, index_params=params)
        self.client.load_collection(self.collection)
        self.dim = dim

    def upsert(self, rows: list[IndexRow]) -> dict[str, str]:
        """Write rows, replacing any with the same detection id. Returns the rows the index refused (detection
        id: reason), which are not written; raises IndexUnavailable when the index cannot be reached."""
        if not rows:
            return {}
        if self.dim is None:
            raise ValueError("the index has no collection yet: open it with the model's dim to write")
        refused = {
            r.detection.detection_id: f"vector of shape {r.instance.shape}, the index holds ({self.dim},)"
            for r in rows
            if r.instance.shape != (self.dim,)
        }
        rows = [r for r in rows if r.detection.detection_id not in refused]
        try:
            self._write(rows)
        except MilvusException as exc:
            if _transient(exc):
                raise IndexUnavailable(f"Milvus upsert failed at {self.uri}: {exc.message}") from None
            for r in rows:  # the server refused the batch: find the rows it refuses
                try:
                    self._write([r])
                except MilvusException as one:
                    if _transient(one):
                        raise IndexUnavailable(f"Milvus upsert failed at {self.uri}: {one.message}") from None
                    refused[r.detection.detection_id] = f"index refused the row: {one.message}"
        return refused

    def _write(self, rows: list[IndexRow]) -> None:
        if not rows:
            return
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

    def preload(self) -> int:
        """Nothing: the Milvus server keeps a loaded collection in its own memory. Returns 0 bytes."""
        return 0

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

    def row_counts(self, ids: list[str], chunk: int = 500) -> dict[str, int]:
        """How many rows hold each of these detection ids (ids with none left out; more than one would be a
        duplicate)."""
        if self.dim is None:
            return {}
        bad = [i for i in ids if not is_detection_id(i)]  # ids are quoted in the filter: nothing is injected
        if bad:
            raise ValueError(f"bad detection id {bad[0]!r}")
        counts: dict[str, int] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            quoted, limit = ", ".join(f'"{i}"' for i in part), 4 * len(part)
            rows = self._retry(
                "query",
                lambda q=quoted, n=limit: self.client.query(
                    self.collection, filter=f"id in [{q}]", output_fields=["id"], limit=n
                ),
            )
            for r in rows:
                counts[r["id"]] = counts.get(r["id"], 0) + 1
        return counts

    def delete(self, ids: list[str]) -> int:
        """Delete detections by id (missing ids are ignored); returns how many were there."""
        if self.dim is None or not ids:
            return 0
        present = [r["id"] for r in self.client.get(self.collection, ids=ids, output_fields=["id"])]
        if present:
            self._retry("delete", lambda: self.client.delete(self.collection, ids=present))
        return len(present)

    def older_than(
        self,
        ts: float,
        limit: int = 16384,
        cameras: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> list[IndexedDetection]:
        """Detections seen before `ts` (unix seconds), of `cameras` only or of all but `exclude` when given,
        at most `limit` (call again after deleting them)."""
        if self.dim is None:
            return []
        if not math.isfinite(ts):
            raise ValueError(f"ts must be a finite time, got {ts!r}")
        expr = f"ts < {float(ts)!r}"
        if cameras is not None:
            expr += f" and {_filter(cameras, None, None)}"
        if exclude:
            expr += f" and not ({_filter(exclude, None, None)})"
        return self._rows(expr, limit)

    def of_track(
        self, camera: str, track_id: int, id_prefix: str | None = None, limit: int = 4096
    ) -> list[IndexedDetection]:
        """Detections of one local track of a camera (ids starting with `id_prefix` when given: one ingest
        run's), at most `limit` (call again after deleting them)."""
        if self.dim is None:
            return []
        expr = f"{_filter([camera], None, None)} and track == {int(track_id)}"
        if id_prefix is not None:
            if not _ID_PREFIX.fullmatch(id_prefix):
                raise ValueError(f"bad detection id prefix {id_prefix!r}")
            expr += f' and id like "{id_prefix}%"'
        return self._rows(expr, limit)

    def _rows(self, expr: str, limit: int) -> list[IndexedDetection]:
        """The detections a filter expression selects, at most `limit`."""
        rows = self._retry(
            "query",
            lambda: self.client.query(
                self.collection, filter=expr, output_fields=["id", *_OUTPUT], limit=limit
            ),
        )
        return [_to_detection(r["id"], r) for r in rows]

    def count_by_camera(self, cameras: list[str]) -> dict[str, int]:
        """Rows per camera, for the cameras named."""
        out = dict.fromkeys(cameras, 0)
        for cam in cameras if self.dim is not None else []:
            expr = _filter([cam], None, None)
            res = self._retry(
                "count",
                lambda e=expr: self.client.query(self.collection, filter=e, output_fields=["count(*)"]),
            )
            out[cam] = int(res[0]["count(*)"])
        return out

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        camera: str | list[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexedDetection]:
        """Nearest detections by cosine similarity, optionally filtered by camera(s) and time range."""
        if self.dim is None:
            return []
        if vector.shape != (self.dim,):
            raise ValueError(f"query vector has shape {vector.shape}, the index holds ({self.dim},)")
        expr = _filter(*check_filter(camera, since, until))
        res = self._retry(
            "search",
            lambda: self.client.search(
                self.collection,
                data=[vector.astype(np.float32).tolist()],
                anns_field=VECTOR_FIELD,
                limit=top_k,
                filter=expr,
                output_fields=_OUTPUT,
                search_params={"params": self.search_params},
            ),
        )
        return [_to_detection(h["id"], h["entity"], score=float(h["distance"])) for h in res[0]]

    def search_ids(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        camera: str | list[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Candidates:
        """`search` returning only ids, similarities and models (the metadata of the few results shown is
        fetched with `get`)."""
        if self.dim is None:
            return Candidates([], np.empty(0, np.float32), [])
        if vector.shape != (self.dim,):
            raise ValueError(f"query vector has shape {vector.shape}, the index holds ({self.dim},)")
        expr = _filter(*check_filter(camera, since, until))
        res = self._retry(
            "search",
            lambda: self.client.search(
                self.collection,
                data=[vector.astype(np.float32).tolist()],
                anns_field=VECTOR_FIELD,
                limit=top_k,
                filter=expr,
                output_fields=["model"],
                search_params={"params": self.search_params},
            ),
        )
        hits = res[0]
        return Candidates(
            [h["id"] for h in hits],
            np.array([h["distance"] for h in hits], np.float32),
            [h["entity"]["model"] for h in hits],
        )

    def compact(self) -> None:
        """Ask the index to rewrite its segments without deleted rows (after an erasure). A Milvus server
        compacts; milvus-lite has no manual compaction (its size-tiered compaction drops deleted rows when it
        next merges their segment), and a failure here never undoes the deletion: both are logged."""
        if self.dim is None:
            return
        try:
            self.client.compact(self.collection)
        except Exception as exc:  # the rows are deleted already; compaction only reclaims their space
            log.warning("milvus compaction after an erasure failed: %s", exc)
        if "://" not in self.uri:
            log.info("milvus-lite keeps deleted rows in their segment files until it compacts them")

    def close(self) -> None:
        """Close the client; for a milvus-lite file also stop its in-process server, which releases the
        file lock so that another process (the next matcher, a search command) may open it."""
        self.client.close()
        if "://" not in self.uri:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def _retry(self, what: str, fn):
        """Call `fn`, retrying only errors that may go away (a server that is down); others raise at once."""
        delay = 0.5
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # pymilvus raises several types for a lost server
                if attempt == self.retries or not _transient(exc):
                    raise
                log.warning("milvus %s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)


def check_filter(
    camera: str | list[str] | None, since: float | None, until: float | None
) -> tuple[list[str] | None, float | None, float | None]:
    """The cameras as a list (None: all) and the time bounds, checked: a bad camera id, an empty camera list
    or a time that is not finite raises ValueError."""
    cameras = [camera] if isinstance(camera, str) else camera
    if cameras is not None:
        bad = [c for c in cameras if not is_camera_id(c)]
        if bad or not cameras:
            raise ValueError(f"bad camera id {bad[0]!r}" if bad else "an empty camera list matches nothing")
    for name, value in (("since", since), ("until", until)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite time, got {value!r}")
    return cameras, None if since is None else float(since), None if until is None else float(until)


def _filter(cameras: list[str] | None, since: float | None, until: float | None) -> str:
    """A Milvus filter expression for cameras and a time range (values checked: nothing is injected)."""
    cameras, since, until = check_filter(cameras, since, until)
    filters = []
    if cameras is not None:
        quoted = ", ".join(f'"{c}"' for c in cameras)  # ids are [A-Za-z0-9_.-]: nothing to escape
        filters.append(f"camera in [{quoted}]")
    for op, value in ((">=", since), ("<=", until)):
        if value is not None:
            filters.append(f"ts {op} {value!r}")
    return " and ".join(filters)


def _transient(exc: BaseException) -> bool:
    """A lost or busy server, not a request it refuses (those fail the same way every time)."""
    import grpc

    if isinstance(exc, grpc.RpcError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, MilvusException) and (exc.code == UNAVAILABLE or getattr(exc, "_retriable", False))


def _locked(db: Path) -> bool:
    """Whether another process holds milvus-lite's lock on a .db folder."""
    lock = db / "LOCK"
    if not lock.is_file():
        return False
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


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
