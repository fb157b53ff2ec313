"""Deleting from the broker what every consumer group has read (transport.delete_consumed).

A topic then holds its readers' backlog instead of its whole history. Apache Kafka bounds a topic by its
retention and costs little per record held; noida-db enforces no retention and rewrites everything it holds
every second or so (a Duke replay at 10x: half a core, 211-226 CPU-s a run, most of it for records the
stages had long read). Camera images in the crops topic are also personal data: deleting them once read
keeps them no longer than the stages need them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from pgr.metrics import PipelineMetrics
from pgr.transport import Consumer

log = logging.getLogger(__name__)


class ConsumedDeleter:
    """Deletes, at most every `interval_s`, the records of `topics` in the partitions the stage's consumer
    owns that every consumer group has committed (`Consumer.delete_committed`), and counts them in
    `pgr_records_deleted{stage,topic}`. A broker that refuses or does not answer is logged and tried again
    at the next interval; the stage never stops for it."""

    def __init__(
        self, metrics: PipelineMetrics, stage: str, topics: Collection[str], interval_s: float = 5.0
    ) -> None:
        self.metrics, self.stage, self.topics, self.interval_s = metrics, stage, set(topics), interval_s
        self._last = -float("inf")
        self._failing = False

    def update(self, consumer: Consumer) -> None:
        """Delete what every group has read, unless it was done less than `interval_s` ago."""
        now = time.monotonic()
        if not self.topics or now - self._last < self.interval_s:
            return
        self._last = now
        try:
            deleted = consumer.delete_committed(self.topics)
        except Exception as exc:
            # once at warning level, then quietly until it works again
            log.log(
                logging.DEBUG if self._failing else logging.WARNING,
                "%s: deleting consumed records failed: %s",
                self.stage,
                exc,
            )
            self._failing = True
            return
        self._failing = False
        for (topic, _), n in deleted.items():
            self.metrics.records_deleted.labels(self.stage, topic).inc(n)
