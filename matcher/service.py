"""The matcher: consume feature records, keep thumbnails on disk and index the detections in Milvus."""

from __future__ import annotations

import logging
import time

from matcher.feature_store import FeatureStore
from matcher.index import DetectionIndex, IndexRow
from matcher.thumbnails import ThumbnailStore
from pgr.consume_loop import dead_letter
from pgr.messages import FeatureRecord, MalformedRecord, decode_feature
from pgr.metrics import PipelineMetrics
from pgr.transport import Message, Producer

log = logging.getLogger(__name__)
STAGE = "matcher"


class MatcherWorker:
    """Writes a batch of feature messages to the index; idempotent on the detection id."""

    def __init__(
        self,
        index: DetectionIndex,
        thumbnails: ThumbnailStore,
        features: FeatureStore,
        producer: Producer,
        dead_letter_topic: str,
        metrics: PipelineMetrics,
    ) -> None:
        self.index, self.thumbnails, self.features = index, thumbnails, features
        self.producer, self.metrics = producer, metrics
        self.dead_letter_topic = dead_letter_topic

    def handle(self, messages: list[Message]) -> None:
        """Index the batch; returns after the index write (then the caller commits)."""
        records: dict[str, FeatureRecord] = {}
        for msg in messages:
            try:
                rec = decode_feature(msg.value)
                dim = self.index.dim or rec.instance.shape[0]
                if rec.instance.shape[0] != dim:
                    raise MalformedRecord(f"instance has {rec.instance.shape[0]} dims, the index holds {dim}")
            except MalformedRecord as exc:
                dead_letter(self.producer, self.dead_letter_topic, msg, STAGE, str(exc), self.metrics)
                continue
            records[rec.detection.detection_id] = rec  # a duplicate inside one batch keeps the last
        self.producer.flush()
        if not records:
            return
        t0 = time.perf_counter()
        rows = []
        for rec in records.values():
            det = rec.detection
            thumb = self.thumbnails.save(det.camera_id, det.detection_id, rec.jpeg)
            self.features.save(det.camera_id, det.detection_id, rec.crop_features())
            rows.append(IndexRow(det, str(thumb), rec.model, rec.instance))
        self.index.upsert(rows)
        now = time.time()
        self.metrics.stage_latency.labels("index").observe(time.perf_counter() - t0)
        self.metrics.records_indexed.inc(len(rows))
        for rec in records.values():
            if rec.detection.read_at > 0:
                self.metrics.end_to_end_latency.observe(now - rec.detection.read_at)
