"""The re-ID worker: consume crop records in batches, extract features, publish feature records (and, for
the crops it sheds while behind, sightings: reid/sampling.py)."""

from __future__ import annotations

import logging
import time
from functools import partial

import numpy as np

from pgr.consume_loop import dead_letter, reason
from pgr.images import decode_image
from pgr.messages import (
    CropFeatures,
    CropRecord,
    FeatureRecord,
    decode_crop,
    encode_feature,
    encode_sighting,
)
from pgr.metrics import PipelineMetrics
from pgr.transport import Message, Producer
from reid.extractor import FeatureExtractor
from reid.sampling import TrackSampler, record_quality

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
        sampler: TrackSampler | None = None,
    ) -> None:
        self.extractor, self.producer, self.metrics = extractor, producer, metrics
        self.features_topic, self.dead_letter_topic = features_topic, dead_letter_topic
        metrics.dead_lettered.labels(STAGE)  # exported at 0: the first dead letter is an increase
        self.sampler = sampler  # which crops of a track to extract (None: all)
        self.crop_s = 0.0  # extraction seconds a crop, a moving average of the batches (shedding's backlog)

    def handle(self, messages: list[Message]) -> None:
        """Extract and publish; returns once every output is flushed (then the caller commits).

        No record can make this raise: one that fails to decode, extract or encode is dead-lettered with the
        reason. Only a producer that cannot deliver (the broker) raises, and then nothing is committed.
        """
        good: list[tuple[Message, CropRecord, np.ndarray]] = []
        in_order: list[tuple[CropRecord, int | None]] = []  # (crop, its index in `good`; None: shed)
        for msg in messages:
            try:
                rec = decode_crop(msg.value)
                backlog_s = len(good) * self.crop_s  # the extraction queued ahead of this crop
                decision = (
                    "extract"
                    if self.sampler is None
                    else self.sampler.decide(rec.detection, backlog_s, partial(record_quality, rec))
                )
                if decision == "shed":  # the matcher still hears that the track goes on (a sighting)
                    in_order.append((rec, None))
                    self.metrics.crops_shed.inc()
                    continue
                if decision == "sampled":
                    self.metrics.crops_sampled_out.inc()
                    continue
                good.append((msg, rec, decode_image(rec.jpeg)))
                in_order.append((rec, len(good) - 1))
            except Exception as exc:  # a record must never stop the worker
                self._dead(msg, exc)
        features: list[CropFeatures | None] = []
        if good:
            t0 = time.perf_counter()
            features = self._extract(good)
            took = time.perf_counter() - t0
            self.metrics.stage_latency.labels("extract").observe(took)
            per_crop = took / len(good)
            self.crop_s = per_crop if self.crop_s == 0 else 0.8 * self.crop_s + 0.2 * per_crop
        for rec, i in in_order:  # in the order they came: a camera's records stay in stream order
            if i is None:
                self._send(encode_sighting(rec.detection), rec)
            elif (f := features[i]) is not None:
                self._publish(good[i][0], rec, f)
        self.producer.flush()

    def _extract(self, good: list[tuple[Message, CropRecord, np.ndarray]]) -> list[CropFeatures | None]:
        """Features for the batch; if the batch fails, crop by crop, dead-lettering the crops that fail."""
        try:
            return self.extractor.extract([image for _, _, image in good])
        except Exception:  # find the crop that broke the batch
            log.warning("extraction of a batch of %d failed; retrying crop by crop", len(good))
        out: list[CropFeatures | None] = []
        for msg, _, image in good:
            try:
                out.append(self.extractor.extract([image])[0])
            except Exception as exc:
                self._dead(msg, exc)
                out.append(None)
        return out

    def _publish(self, msg: Message, rec: CropRecord, f: CropFeatures) -> None:
        try:
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
            value = encode_feature(out)
        except Exception as exc:  # e.g. the model produced non-finite features
            self._dead(msg, exc)
            return
        self._send(value, rec)
        self.metrics.features_extracted.inc()

    def _send(self, value: bytes, rec: CropRecord) -> None:
        """To the features topic, keyed by camera: a camera's records stay in order."""
        self.producer.send(self.features_topic, value, key=rec.detection.camera_id.encode())

    def _dead(self, msg: Message, exc: BaseException) -> None:
        dead_letter(self.producer, self.dead_letter_topic, msg, STAGE, reason(exc), self.metrics)
