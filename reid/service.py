"""The re-ID worker: consume crop records in batches, extract features, publish feature records (and, for
the crops it sheds while behind, sightings: reid/sampling.py).

Rescue (`reid.shed_rescue_tracks` = N > 0): a shed crop of a track whose tracklet has had no crop extracted
(shed past `reid.shed_all_after_s`, or passed over for its quality) is kept in memory, the best of each such
track by quality, for at most N tracks (the oldest goes first, counted). Once its track has ended (its
camera's stream ran the matcher's end gap past it) and the stage is back under that bound, the kept crop is
extracted and published after all: the track gets an identity late rather than never. A later crop of the
track that is extracted the usual way makes its kept one moot. Kept crops were committed with their batch,
so a worker that stops loses them (those tracks get no identity, as without rescue)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    track_key,
)
from pgr.metrics import PipelineMetrics
from pgr.transport import Message, Producer
from reid.extractor import FeatureExtractor
from reid.sampling import TrackSampler, record_quality

log = logging.getLogger(__name__)
STAGE = "reid"


@dataclass
class RescueCandidate:
    """A shed crop kept for rescue: its message (for dead-lettering), record and quality."""

    msg: Message
    rec: CropRecord
    quality: float


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
        rescue_tracks: int = 0,
    ) -> None:
        self.extractor, self.producer, self.metrics = extractor, producer, metrics
        self.features_topic, self.dead_letter_topic = features_topic, dead_letter_topic
        metrics.dead_lettered.labels(STAGE)  # exported at 0: the first dead letter is an increase
        self.sampler = sampler  # which crops of a track to extract (None: all)
        self.crop_s = 0.0  # extraction seconds a crop, a moving average of the batches (shedding's backlog)
        self.rescue_tracks = rescue_tracks if sampler is not None else 0
        self.kept: dict[str, RescueCandidate] = {}  # track key -> its best shed crop, oldest track first

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
                    self._keep(msg, rec)
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
        if self.kept:
            self._rescue(max((rec.detection.read_at for rec, _ in in_order), default=None))
        self.producer.flush()

    def _keep(self, msg: Message, rec: CropRecord) -> None:
        """Keep a shed crop of a track that has nothing extracted, if it is that track's best so far."""
        if not self.rescue_tracks or self.sampler is None:
            return
        key = track_key(rec.detection)
        if not self.sampler.unserved(key):
            return
        quality = record_quality(rec)
        if key in self.kept:
            if quality > self.kept[key].quality:
                self.kept[key] = RescueCandidate(msg, rec, quality)  # keeps its place: the track's age
            return
        if len(self.kept) >= self.rescue_tracks:
            del self.kept[next(iter(self.kept))]
            self.metrics.crops_rescue_dropped.inc()
        self.kept[key] = RescueCandidate(msg, rec, quality)

    def _rescue(self, newest_read_at: float | None) -> None:
        """Extract the kept crops of tracks that have ended with nothing extracted, oldest first, as many as
        keep the stage under the sampler's bound (`newest_read_at`: the batch's newest frame)."""
        assert self.sampler is not None
        for key in [k for k in self.kept if not self.sampler.unserved(k)]:
            del self.kept[key]  # a crop of it was extracted the usual way (or it was forgotten)
        due = [k for k in self.kept if self.sampler.gone(k)]
        if not due:
            return
        bound = self.sampler.bound_s
        if bound > 0:  # a batch of nothing decodable says nothing of how late the stage is: wait
            room = -1.0 if newest_read_at is None else bound - (self.sampler.clock() - newest_read_at)
            due = due[: max(0, int(room / self.crop_s)) if self.crop_s > 0 else int(room > 0)]
        if not due:
            return
        kept, batch = [], []
        for key in due:
            k = self.kept.pop(key)
            try:
                batch.append((k.msg, k.rec, decode_image(k.rec.jpeg)))
                kept.append(k)
            except Exception as exc:  # a crop that cannot be decoded: dead-lettered, as if extracted
                self._dead(k.msg, exc)
        features = self._extract(batch) if batch else []
        for k, f in zip(kept, features, strict=True):
            if f is not None:
                self._publish(k.msg, k.rec, f)
                self.sampler.served(k.rec.detection)
                self.metrics.crops_rescued.inc()

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
