"""The matcher: consume feature records, keep thumbnails and features on disk and index the detections;
sightings (shed crops, no features) only extend their tracklets."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterator

from matcher.feature_store import FeatureStore
from matcher.identity_service import IdentityService
from matcher.index import IndexRow
from matcher.open_index import AnyIndex
from matcher.thumbnails import ThumbnailStore
from matcher.tombstones import Tombstones
from pgr.consume_loop import dead_letter, reason
from pgr.errors import IndexUnavailable, StorageUnavailable
from pgr.messages import Detection, FeatureRecord, IdentityEvent, MalformedRecord, decode_features_topic
from pgr.metrics import PipelineMetrics
from pgr.transport import Message, Producer

log = logging.getLogger(__name__)
STAGE = "matcher"
# file-system errors caused by the record itself (its name), not by the disk
_RECORD_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}
GALLERY_COUNT_S = 10.0  # how often the matcher counts the index's rows (pgr_gallery_size)
INDEX_RETRY_MAX_S = 30.0  # the longest wait between two tries of a batch the index did not take


@contextlib.contextmanager
def _disk_errors_reported(worker: MatcherWorker) -> Iterator[None]:
    """A disk that cannot be written (full, read-only, failing) as one clear StorageUnavailable: the stores
    have kept every earlier commit and nothing of this batch, whose records come again after a restart."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _RECORD_ERRNOS:
            raise
        where = exc.filename or f"{worker.thumbnails.root}, {worker.features.root} or {worker.index.uri}"
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StorageUnavailable(
            f"the matcher cannot write {where}: {why}. Nothing of this batch was committed (its records "
            "are delivered again) and everything indexed before is intact: free space (or fix the disk) "
            "and start the matcher again"
        ) from exc


class MatcherWorker:
    """Writes a batch of feature messages to the index; idempotent on the detection id.

    Records of another model than `model` (the configured one) or of another dimension than the index's are
    dead-lettered, as is every record that fails to decode or that the index or the file system refuses; no
    record can make `handle` raise. Only a disk that cannot be written raises (nothing is then committed,
    and the records come again). An index that does not answer is waited for, the batch tried again with
    growing waits and each failure counted, until it is written or `stop` is set (then it raises); without
    `stop` it raises at once.
    """

    def __init__(
        self,
        index: AnyIndex,
        thumbnails: ThumbnailStore,
        features: FeatureStore,
        producer: Producer,
        dead_letter_topic: str,
        metrics: PipelineMetrics,
        model: str | None = None,
        identities: IdentityService | None = None,
        tombstones: Tombstones | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if index.dim is None:
            raise ValueError("the matcher needs an index opened with the configured model's dim")
        self.index, self.thumbnails, self.features = index, thumbnails, features
        self.producer, self.metrics, self.model = producer, metrics, model
        self.dead_letter_topic = dead_letter_topic
        self.identities = identities
        self.tombstones = tombstones
        self.stop = stop
        metrics.dead_lettered.labels(STAGE)  # exported at 0: the first error is then an increase
        for why in ("unavailable", "refused"):
            metrics.index_write_errors.labels(why)
        self._counted_at = -float("inf")
        self._count_gallery()

    def handle(self, messages: list[Message]) -> None:
        """Index the batch; returns after the index write (then the caller commits)."""
        records: dict[str, tuple[Message, FeatureRecord]] = {}
        sightings: list[tuple[Message, Detection]] = []
        for msg in messages:
            try:
                rec = self._accept(msg)
            except Exception as exc:  # a record must never stop the worker
                self._dead(msg, exc)
                continue
            if isinstance(rec, Detection):
                sightings.append((msg, rec))
            else:  # a duplicate inside one batch keeps the last
                records[rec.detection.detection_id] = (msg, rec)
        # erased on request (matcher/tombstones.py): neither indexed nor tracked, nor extended by a sighting
        self._drop_erased(records, sightings)
        with _disk_errors_reported(self):
            self._write(records, sightings)

    def _write(
        self, records: dict[str, tuple[Message, FeatureRecord]], sightings: list[tuple[Message, Detection]]
    ) -> None:
        """Thumbnails, identities, features and index rows of the accepted records; dead-letters what they
        refuse. The identity decisions come before the feature and index writes (their events go out
        without waiting for those); the identity state is saved after them, before the caller commits."""
        t0 = time.perf_counter()
        thumbs: dict[str, str] = {}
        crops = []
        for msg, rec in list(records.values()):
            det = rec.detection
            try:
                thumb = self.thumbnails.save(det.camera_id, det.detection_id, rec.jpeg)
                crops.append((det.detection_id, rec.crop_features()))
            except (OSError, UnicodeError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno not in _RECORD_ERRNOS:
                    raise  # a full or read-only disk: not this record's fault
                self._dead(msg, exc)
                del records[det.detection_id]
                continue
            thumbs[det.detection_id] = str(thumb)
        # features that do not fit the store: out before the identities take them
        for det_id, why in self.features.misfits(crops).items():
            msg, rec = records.pop(det_id)
            self.thumbnails.remove(rec.detection.camera_id, det_id)
            self._dead(msg, MalformedRecord(why))
        crops = [(det_id, f) for det_id, f in crops if det_id in records]
        events = self._decide(records, sightings, thumbs)
        # one commit for the batch's features; a full disk raises here (nothing committed, records come again)
        for det_id, why in self.features.save_many(crops).items():  # none: misfits are out
            msg, rec = records.pop(det_id)
            self.thumbnails.remove(rec.detection.camera_id, det_id)
            self._dead(msg, MalformedRecord(why))
        rows = [IndexRow(r.detection, thumbs[i], r.model, r.instance) for i, (_, r) in records.items()]
        refused = self._upsert(rows)
        self.metrics.index_write_errors.labels("refused").inc(len(refused))
        # a crop refused here stays in its tracklet, decided above (_accept already refuses what the embedded
        # index would: another size or model; decoding, a non-finite or zero vector)
        for det_id, why in refused.items():
            msg, rec = records.pop(det_id)
            self.thumbnails.remove(rec.detection.camera_id, det_id)  # files only for indexed rows
            self._dead(msg, MalformedRecord(why))
        self.features.delete([det_id for det_id in thumbs if det_id not in records])
        self.producer.flush()
        if self.identities is not None:  # after the index write, before the commit
            self.identities.save(events)
        erased = self._drop_erased(records)  # erased while this batch was being written: undo its writes
        for rec in erased:
            self.thumbnails.remove(rec.detection.camera_id, rec.detection.detection_id)
        self.features.delete([rec.detection.detection_id for rec in erased])
        self.index.delete([rec.detection.detection_id for rec in erased])
        if erased:  # erased: off the disk too, not only out of search
            self.features.compact()
            self.index.compact()
        if not records:
            return
        now = time.time()
        self.metrics.stage_latency.labels("index").observe(time.perf_counter() - t0)
        self.metrics.records_indexed.inc(len(records))
        for _, rec in records.values():
            if rec.detection.read_at > 0:
                self.metrics.end_to_end_latency.observe(now - rec.detection.read_at)
        self._count_gallery()

    def _decide(
        self,
        records: dict[str, tuple[Message, FeatureRecord]],
        sightings: list[tuple[Message, Detection]],
        thumbs: dict[str, str],
    ) -> list[IdentityEvent]:
        """The identity decisions of the batch's crops and sightings, in stream order (events sent)."""
        self.metrics.sightings.inc(len(sightings))
        if self.identities is None:
            return []
        items: list[tuple[Message, Detection, tuple[FeatureRecord, str] | Detection]] = [
            (msg, rec.detection, (rec, thumbs[rec.detection.detection_id])) for msg, rec in records.values()
        ]
        items += [(msg, det, det) for msg, det in sightings]
        items.sort(key=lambda item: (item[1].timestamp, item[0].offset))
        return self.identities.decide([item for _, _, item in items])

    def tick(self) -> None:
        """Between polls: decide the tracklets that ended while nothing came."""
        if self.identities is not None:
            self.identities.tick()
        self._count_gallery()

    def _upsert(self, rows: list[IndexRow]) -> dict[str, str]:
        """Write the rows; an index that does not answer is tried again (see the class)."""
        delay = 1.0
        while True:
            try:
                return self.index.upsert(rows)
            except IndexUnavailable as exc:
                self.metrics.index_write_errors.labels("unavailable").inc()
                if self.stop is None:
                    raise
                log.warning("%s; trying the batch again in %.0fs", exc, delay)
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, INDEX_RETRY_MAX_S)

    def _count_gallery(self) -> None:
        """Export the index's row count, at most every GALLERY_COUNT_S."""
        now = time.monotonic()
        if now - self._counted_at < GALLERY_COUNT_S:
            return
        self._counted_at = now
        try:
            self.metrics.gallery_size.set(self.index.count())
        except Exception as exc:  # a count is for the dashboard: it never stops the matcher
            log.debug("counting the index failed: %s", exc)

    def finish(self) -> None:
        """The stream is over (embedded run drained): decide every open tracklet."""
        if self.identities is not None:
            self.identities.finish()

    def _drop_erased(
        self,
        records: dict[str, tuple[Message, FeatureRecord]],
        sightings: list[tuple[Message, Detection]] | None = None,
    ) -> list[FeatureRecord]:
        """Take the records with a tombstone out of `records` (counted), and the sightings out of
        `sightings`, in one look-up; returns the records taken."""
        if self.tombstones is None or not (records or sightings):
            return []
        sightings = [] if sightings is None else sightings
        dets = [rec.detection for _, rec in records.values()] + [det for _, det in sightings]
        erased = self.tombstones.erased(dets)
        sightings[:] = [(msg, det) for msg, det in sightings if det.detection_id not in erased]
        dropped = [records.pop(det_id)[1] for det_id in sorted(erased) if det_id in records]
        self.metrics.records_erased.inc(len(dropped))
        return dropped

    def _accept(self, msg: Message) -> FeatureRecord | Detection:
        rec = decode_features_topic(msg.value)
        if isinstance(rec, Detection):
            return rec  # a sighting: no features to check
        if self.model is not None and rec.model != self.model:
            raise MalformedRecord(f"features of model {rec.model!r}, this matcher indexes {self.model!r}")
        if rec.instance.shape[0] != self.index.dim:
            dims = rec.instance.shape[0]
            raise MalformedRecord(f"instance has {dims} dims, the index holds {self.index.dim}")
        return rec

    def _dead(self, msg: Message, exc: BaseException) -> None:
        dead_letter(self.producer, self.dead_letter_topic, msg, STAGE, reason(exc), self.metrics)
