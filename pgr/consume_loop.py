"""The loop every consuming service runs: poll a batch, handle it, commit; dead-letter what is malformed."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable

from pgr.consumed_deletion import ConsumedDeleter
from pgr.messages import MalformedRecord
from pgr.metrics import PipelineMetrics
from pgr.transport import Consumer, Message, Producer

log = logging.getLogger(__name__)


# A dead letter carries the record whole up to this size: base64 in JSON, it then stays under the 1 MB a
# broker accepts by default. A larger record keeps its first bytes; the whole is at its offset in the
# source topic (for the topic's retention).
DEAD_LETTER_PAYLOAD_BYTES = 256 * 1024
LAG_INTERVAL_S = 2.0  # how often a consuming stage looks up and exports its lag


class LagReporter:
    """Exports a stage's consumer lag (`pgr_consumer_lag{stage,topic,partition}`) at most every
    `interval_s`: the partitions the consumer owns now, and nothing for the ones a rebalance took away."""

    def __init__(self, metrics: PipelineMetrics, stage: str, interval_s: float = LAG_INTERVAL_S) -> None:
        self.metrics, self.stage, self.interval_s = metrics, stage, interval_s
        self._last = -float("inf")
        self._shown: set[tuple[str, int]] = set()

    def update(self, consumer: Consumer) -> None:
        """Look the lag up and export it, unless it was done less than `interval_s` ago."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        try:
            lags = consumer.lag()
        except Exception as exc:  # a broker that does not answer: keep the last values, never stop the stage
            log.debug("%s: lag look-up failed: %s", self.stage, exc)
            return
        gauge = self.metrics.consumer_lag
        for (topic, partition), n in lags.items():
            gauge.labels(self.stage, topic, str(partition)).set(n)
        for topic, partition in self._shown - lags.keys():
            gauge.remove(self.stage, topic, str(partition))
        self._shown = set(lags)


def dead_letter(
    producer: Producer, topic: str, msg: Message, stage: str, error: str, metrics: PipelineMetrics
) -> None:
    """Send a record that cannot be processed, with where it came from and why, to the dead-letter topic."""
    value = msg.value or b""
    body = {
        "stage": stage,
        "error": error[:2000],
        "source_topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "failed_at": time.time(),
        "payload": base64.b64encode(value[:DEAD_LETTER_PAYLOAD_BYTES]).decode("ascii"),
        "payload_bytes": len(value),
        "payload_truncated": len(value) > DEAD_LETTER_PAYLOAD_BYTES,
    }
    producer.send(topic, json.dumps(body).encode(), key=msg.key[:256] if msg.key else None)
    metrics.dead_lettered.labels(stage).inc()
    log.warning("%s: dead-lettered %s[%d]@%d: %s", stage, msg.topic, msg.partition, msg.offset, error[:200])


def reason(exc: BaseException) -> str:
    """The dead-letter reason for an exception raised by one record: its message, and its type unless the
    decoder raised it (a MalformedRecord message says all)."""
    text = str(exc) or repr(exc)
    return text if isinstance(exc, MalformedRecord) else f"{type(exc).__name__}: {text}"


def consume_loop(
    consumer: Consumer,
    handle: Callable[[list[Message]], None],
    stop: threading.Event,
    upstream_done: threading.Event | None = None,
    max_records: int = 64,
    poll_timeout_s: float = 0.5,
    tick: Callable[[], None] | None = None,
    finish: Callable[[], None] | None = None,
    lag: LagReporter | None = None,
    linger_s: float = 0.0,
    deleter: ConsumedDeleter | None = None,
) -> None:
    """Poll, handle, commit until `stop`; or, once `upstream_done` is set, until a poll comes back empty
    (then `finish` runs). `tick`, when given, runs after a poll that came back empty: work driven by the
    clock runs when the consumer has caught up, never because its own backlog kept it busy. `lag`, when
    given, exports the consumer's lag after commits and empty polls; `deleter`, when given, deletes from the
    broker what every group has committed, at the same points. `linger_s`: after a poll that came
    back with fewer than `max_records`, keep polling up to this long for more, so that one `handle` (and
    its fixed costs) serves several records.

    `handle` must finish its downstream writes before it returns: the commit that follows it is what
    makes delivery at-least-once.
    """
    try:
        while not stop.is_set():
            finishing = upstream_done is not None and upstream_done.is_set()
            batch = consumer.poll(max_records=max_records, timeout_s=poll_timeout_s)
            if batch and linger_s > 0:
                batch = _linger(consumer, batch, max_records, linger_s)
            if batch:
                handle(batch)
                consumer.commit()
            elif finishing:
                if finish is not None:
                    finish()
                return
            elif tick is not None:
                tick()
            if lag is not None:
                lag.update(consumer)
            if deleter is not None:
                deleter.update(consumer)
    finally:
        consumer.close()


def _linger(consumer: Consumer, batch: list[Message], max_records: int, linger_s: float) -> list[Message]:
    """`batch` and what else arrives within `linger_s`, up to `max_records` records."""
    deadline = time.monotonic() + linger_s
    while len(batch) < max_records and (left := deadline - time.monotonic()) > 0:
        more = consumer.poll(max_records=max_records - len(batch), timeout_s=left)
        if not more:
            break
        batch = batch + more
    return batch
