"""The re-ID worker: consume crop records in batches, extract features, publish feature records."""

from __future__ import annotations

import logging
import time

from pgr.consume_loop import dead_letter
from pgr.images import BadImage, decode_image
from pgr.messages import CropRecord, FeatureRecord, MalformedRecord, decode_crop, encode_feature
from pgr.metrics import PipelineMetrics
from pgr.transport import Message, Producer
from reid.extractor import FeatureExtractor

log = logging.getLogger(__name__)
STAGE = "reid"


class ReidWorker:
    """Turns a batch of crop messages into feature records; malformed ones go to the dead-letter topic."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        producer: Producer,
        features_topic: str,
        dead_letter_topic: str,
        metrics: PipelineMetrics,
    ) -> None:
        self.extractor, self.producer, self.metrics = extractor, producer, metrics
        self.features_topic, self.dead_letter_topic = features_topic, dead_letter_topic

    def handle(self, messages: list[Message]) -> None:
        """Extract and publish; returns once every output is flushed (then the caller commits)."""
        crops: list[CropRecord] = []
        images = []
        for msg in messages:
            try:
                rec = decode_crop(msg.value)
                image = decode_image(rec.jpeg)
            except (MalformedRecord, BadImage) as exc:
                dead_letter(self.producer, self.dead_letter_topic, msg, STAGE, str(exc), self.metrics)
                continue
            crops.append(rec)
            images.append(image)
        if crops:
            t0 = time.perf_counter()
            features = self.extractor.extract(images)
            self.metrics.stage_latency.labels("extract").observe(time.perf_counter() - t0)
            for rec, f in zip(crops, features, strict=True):
                out = FeatureRecord(
                    detection=rec.detection,
                    model=self.extractor.name,
                    instance=f.instance,
                    jpeg=rec.jpeg,
                    parts=f.parts,
                    part_visibility=f.part_visibility,
                    pixels=f.pixels,
                    pixel_coords=f.pixel_coords,
                )
                self.producer.send(
                    self.features_topic, encode_feature(out), key=rec.detection.camera_id.encode()
                )
            self.metrics.features_extracted.inc(len(crops))
        self.producer.flush()
