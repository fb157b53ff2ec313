"""Request and response models: what the API takes and gives (they are its OpenAPI documentation)."""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, Field

from matcher.index import IndexedDetection


def _score(v: float) -> float | None:
    return v if math.isfinite(v) else None


class LoginResult(BaseModel):
    user: str
    role: str
    csrf_token: str = Field(
        description="send it as X-CSRF-Token with every POST/DELETE the cookie authenticates"
    )
    token: str = Field(description="for API clients: Authorization: Bearer TOKEN (no CSRF token needed)")
    expires: float


class Me(BaseModel):
    user: str
    role: str
    csrf_token: str | None = Field(None, description="the session's CSRF token (cookie sessions)")


class DetectionOut(BaseModel):
    """A detection: where and when a person was seen, and links to its crop and its frame."""

    detection_id: str
    camera: str
    time: float = Field(description="unix seconds")
    time_iso: str
    frame: int
    track: int = Field(description="local track id on its camera; -1: untracked (a still)")
    box: list[float] = Field(description="x1, y1, x2, y2 in frame pixels")
    thumbnail_url: str
    frame_url: str

    @classmethod
    def of(cls, d: IndexedDetection) -> DetectionOut:
        from urllib.parse import quote

        path = f"/api/detections/{quote(d.detection_id, safe='')}"
        try:
            iso = datetime.fromtimestamp(d.timestamp).astimezone().isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            iso = f"{d.timestamp:g}"
        return cls(
            detection_id=d.detection_id,
            camera=d.camera_id,
            time=d.timestamp,
            time_iso=iso,
            frame=d.frame_index,
            track=d.track_id,
            box=[float(v) for v in d.box],
            thumbnail_url=f"{path}/thumbnail",
            frame_url=f"{path}/frame",
        )


class SearchHit(DetectionOut):
    """A ranked result with its score and the three PGR scores (null where that stage did not score it)."""

    rank: int
    score: float
    s_ins: float | None = Field(None, description="instance similarity (stage 1)")
    s_part: float | None = Field(None, description="part similarity (top n1 re-ranked)")
    s_pixel: float | None = Field(None, description="pixel similarity (top n2 re-ranked)")
    stage: int = Field(
        0,
        description="the stage whose score placed it: 3 (k-reciprocal, top n3), 2 (pixels), 1 (parts), "
        "0 (instance); scores compare within a stage",
    )

    @classmethod
    def ranked(cls, rank: int, d: IndexedDetection) -> SearchHit:
        return cls(
            **DetectionOut.of(d).model_dump(),
            rank=rank,
            score=d.score,
            s_ins=_score(d.s_ins),
            s_part=_score(d.s_part),
            s_pixel=_score(d.s_pixel),
            stage=d.stage,
        )


class SearchResult(BaseModel):
    results: list[SearchHit]
    total: int = Field(description="results over all pages (at most serve.max_results)")
    page: int
    page_size: int
    queries: int = Field(description="how many query crops were searched (upload + query_ids)")


class IdList(BaseModel):
    detection_ids: list[str] = Field(min_length=1, max_length=10000)


class Erasure(IdList):
    reason: str = Field(min_length=1, max_length=500, description="why (the request's reference): audited")


class Erased(BaseModel):
    erased: list[str] = Field(description="ids that were found and deleted (index, thumbnail, features)")
    not_found: list[str]


class IdentityErasure(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="why (the request's reference): audited")


class IdentityErasureOut(BaseModel):
    identity_id: str
    request: int = Field(description="the erasure's number in the ledger of tombstones")
    tracklets: int = Field(description="tracklets deleted (every segment of the identity's local tracks)")
    identities: list[str] = Field(
        description="identities deleted: this one, and any other left without tracklets by it"
    )
    events: int = Field(description="identity events deleted")
    detections: int = Field(description="detections deleted (index row, thumbnail and features each)")


class CameraStatus(BaseModel):
    id: str
    detections: int
    files: int = Field(description="files indexed for it with `pgr index`")
    retention_days: float | None = Field(description="how long its detections are kept (null: until erased)")


class Status(BaseModel):
    detections: int
    cameras: list[CameraStatus]
    model: str
    retention_days: float | None
    last_purge: dict
