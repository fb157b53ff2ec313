"""Moving records between stages: an in-process bus for the embedded mode, Kafka for the distributed one.

Both give the same two handles. A `Producer` sends bytes to a topic. A `Consumer` in a group polls
batches and commits only when told to, after the downstream write: a consumer that dies before its commit
has its records delivered again to the group's next member (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from pgr.errors import BrokerUnavailable
from pgr.membership import release_instance_id, static_instance_id

log = logging.getLogger(__name__)
LAG_TIMEOUT_MS = 2000  # a lag look-up never holds a consumer longer than this per request
# between empty polls a consumer sleeps, doubling from the first pause to the last: the longest a record
# that arrives while it sleeps waits for it
EMPTY_POLL_PAUSE_S = (0.002, 0.05)


@dataclass(frozen=True)
class Message:
    """One record as delivered: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Consumer(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Message]: ...
    def commit(self) -> None: ...
    def lag(self) -> dict[tuple[str, int], int]: ...
    def delete_committed(self, topics: Collection[str]) -> dict[tuple[str, int], int]: ...
    def close(self) -> None: ...


class Transport(Protocol):
    def producer(self) -> Producer: ...
    def consumer(self, topics: list[str], group: str) -> Consumer: ...


class InProcessBus:
    """Topics as in-memory logs with consumer-group offsets, for one process.

    It mirrors Kafka's semantics where the pipeline depends on them: a group resumes from its committed
    offset, records polled but not committed are delivered again to the group's next consumer. Unlike Kafka
    it keeps only what some group still needs, and it is bounded: a topic read by groups holds at most
    `capacity` records that its slowest group has not committed, and `send` waits (back-pressure) until that
    group commits, or until `stop` is set (then it keeps the record and goes on, so a stopping pipeline never
    deadlocks). Records every group has committed are released. A topic no group reads (the dead letters)
    keeps everything, for `records`.
    """

    def __init__(self, capacity: int = 256, stop: threading.Event | None = None) -> None:
        self.capacity, self._stop = capacity, stop
        self._logs: dict[str, list[Message]] = defaultdict(list)
        self._base: dict[str, int] = defaultdict(int)  # offset of the first record still held
        self._groups: dict[str, set[str]] = defaultdict(set)
        self._committed: dict[tuple[str, str], int] = defaultdict(int)
        self._cond = threading.Condition()

    def producer(self) -> _BusProducer:
        return _BusProducer(self)

    def consumer(self, topics: list[str], group: str) -> _BusConsumer:
        return _BusConsumer(self, topics, group)

    def append(self, topic: str, value: bytes, key: bytes | None) -> None:
        with self._cond:
            while self._full(topic) and not (self._stop is not None and self._stop.is_set()):
                self._cond.wait(0.2)
            log_ = self._logs[topic]
            log_.append(Message(topic, 0, self._end(topic), key, value))
            self._cond.notify_all()

    def records(self, topic: str) -> list[Message]:
        """The records of a topic still held: all of them for a topic no group reads (tests and the demo
        read the dead-letter topic this way), the uncommitted ones otherwise."""
        with self._cond:
            return list(self._logs[topic])

    def lag(self, topic: str, group: str) -> int:
        """Records in the topic that the group has not committed yet."""
        with self._cond:
            return self._end(topic) - max(self._committed[(group, topic)], 0)

    def _end(self, topic: str) -> int:
        return self._base[topic] + len(self._logs[topic])

    def _slowest(self, topic: str) -> int:
        return min(self._committed[(g, topic)] for g in self._groups[topic])

    def _full(self, topic: str) -> bool:
        return bool(self._groups[topic]) and self._end(topic) - self._slowest(topic) >= self.capacity

    def _join(self, topic: str, group: str) -> int:
        """Register a group on a topic; returns where it resumes (a group new to the topic starts at the
        oldest record still held)."""
        key = (group, topic)
        if group not in self._groups[topic]:
            self._groups[topic].add(group)
            self._committed[key] = max(self._committed[key], self._base[topic])
        return self._committed[key]

    def _commit(self, topic: str, group: str, position: int) -> None:
        self._committed[(group, topic)] = position
        release = self._slowest(topic) - self._base[topic]
        if release > 0:
            del self._logs[topic][:release]
            self._base[topic] += release
        self._cond.notify_all()


class _BusProducer:
    def __init__(self, bus: InProcessBus) -> None:
        self._bus = bus

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._bus.append(topic, value, key)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _BusConsumer:
    def __init__(self, bus: InProcessBus, topics: list[str], group: str) -> None:
        self._bus, self._topics, self._group = bus, topics, group
        with bus._cond:
            self._position = {t: bus._join(t, group) for t in topics}

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        bus = self._bus
        with bus._cond:
            while True:
                out: list[Message] = []
                for t in self._topics:
                    start = self._position[t] - bus._base[t]
                    pending = bus._logs[t][start : start + max_records - len(out)]
                    out.extend(pending)
                    self._position[t] += len(pending)
                if out:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                bus._cond.wait(remaining)

    def commit(self) -> None:
        with self._bus._cond:
            for t, pos in self._position.items():
                self._bus._commit(t, self._group, pos)

    def lag(self) -> dict[tuple[str, int], int]:
        """Uncommitted records per (topic, partition); the bus has one partition per topic."""
        return {(t, 0): self._bus.lag(t, self._group) for t in self._topics}

    def delete_committed(self, topics: Collection[str]) -> dict[tuple[str, int], int]:
        """Nothing to do: the bus releases what every group has committed on its own."""
        return {}

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _reaching(bootstrap: str):
    """Turn "no broker answered" into one BrokerUnavailable line naming the servers."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    try:
        yield
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): check transport.bootstrap "
            "(PGR_KAFKA_BOOTSTRAP) and that the broker is up"
        ) from None


class KafkaTransport:
    """Kafka through kafka-python; offsets are committed by hand after the downstream write.

    A broker that does not answer within `connect_timeout_s` at start raises BrokerUnavailable."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str = "pgr",
        session_timeout_ms: int = 10000,
        partitions: int = 4,
        instance_id: str | None = None,
        connect_timeout_s: float = 30.0,
        options: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options or {}  # security: SASL/TLS (pgr.app.pipeline.kafka_client_options)
        self.bootstrap_timeout_ms = int(connect_timeout_s * 1000)
        self.instance_id = instance_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.partitions = partitions

    def producer(self) -> _KafkaProducer:
        return _KafkaProducer(self)

    def consumer(self, topics: list[str], group: str) -> _KafkaConsumer:
        self.ensure_topics(topics)
        return _KafkaConsumer(self, topics, group)

    def ensure_topics(self, topics: list[str]) -> None:
        """Create missing topics with `partitions` partitions, so that consumers started before any
        producer get their assignment at once and several workers of one group share the load."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        with _reaching(self.bootstrap):
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.client_id}-admin",
                bootstrap_timeout_ms=self.bootstrap_timeout_ms,
                **self.options,
            )
        try:
            missing = [t for t in topics if t not in set(admin.list_topics())]
            if missing:
                new = [NewTopic(t, num_partitions=self.partitions, replication_factor=1) for t in missing]
                with contextlib.suppress(TopicAlreadyExistsError):  # another service created it first
                    admin.create_topics(new)
        finally:
            admin.close()


class _KafkaProducer:
    """Sends are retried by the client until `delivery_timeout_ms` (a broker outage shorter than that
    loses nothing). A broker that lost the producer's state (a restart) makes the client fail the batches
    in flight while it recovers (a new producer id): those records are sent again, at most RESEND_ROUNDS
    times (a record may then be in the topic twice; every consumer is idempotent on the record's id).
    `flush` raises if any record could still not be delivered, so a stage never commits its input after a
    silent loss."""

    RESEND_ROUNDS = 3

    def __init__(self, t: KafkaTransport) -> None:
        from kafka import KafkaProducer

        with _reaching(t.bootstrap):
            self._p = KafkaProducer(
                bootstrap_servers=t.bootstrap,
                client_id=t.client_id,
                acks="all",
                delivery_timeout_ms=120_000,
                max_request_size=16 * 1024 * 1024,
                reconnect_backoff_max_ms=5000,
                bootstrap_timeout_ms=t.bootstrap_timeout_ms,
                **t.options,
            )
        self._pending: list[_Sent] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._send(topic, value, key, attempt=1)

    def _send(self, topic: str, value: bytes, key: bytes | None, attempt: int) -> None:
        self._pending.append(_Sent(self._p.send(topic, value=value, key=key), topic, value, key, attempt))
        if len(self._pending) >= 256:  # a long-running producer (a live camera) rarely flushes
            self._settle()

    def flush(self) -> None:
        while self._pending:
            self._p.flush(timeout=180)
            self._settle()

    def _settle(self) -> None:
        """Forget the records delivered; send again those the producer failed while recovering its state;
        raise for any other failure."""
        done = [p for p in self._pending if p.future.is_done]
        self._pending = [p for p in self._pending if not p.future.is_done]
        failed = [p for p in done if p.future.failed()]
        fatal = [p for p in failed if p.attempt >= self.RESEND_ROUNDS or not _resendable(p.future.exception)]
        if fatal:
            raise RuntimeError(f"{len(failed)} records not delivered: {fatal[0].future.exception!r}")
        if failed:
            log.warning("%d records failed while the producer recovered; sending them again", len(failed))
        for p in failed:
            self._send(p.topic, p.value, p.key, p.attempt + 1)

    def close(self) -> None:
        self._p.close(timeout=10)


@dataclass(frozen=True)
class _Sent:
    """A record handed to the Kafka client, kept until it is delivered."""

    future: object
    topic: str
    value: bytes
    key: bytes | None
    attempt: int


def _resendable(exc: BaseException | None) -> bool:
    """A record failed because the broker lost the producer's state, not because of the record."""
    from kafka import errors

    producer_state = (
        errors.OutOfOrderSequenceNumberError,
        errors.UnknownProducerIdError,
        errors.InvalidProducerEpochError,
    )
    return isinstance(exc, producer_state)


class _KafkaConsumer:
    def __init__(self, t: KafkaTransport, topics: list[str], group: str) -> None:
        self._t, self._group = t, group
        self._admin = None  # made on the first delete_committed
        self._start: dict = {}  # TopicPartition -> its first offset still on the broker, as last seen
        self.instance_id = static_instance_id(group, t.instance_id)  # static membership, always
        with _reaching(t.bootstrap):
            self._c = self._connect(t, topics, group, self.instance_id)

    @staticmethod
    def _connect(t: KafkaTransport, topics: list[str], group: str, instance_id: str):
        from kafka import KafkaConsumer

        return KafkaConsumer(
            *topics,
            bootstrap_servers=t.bootstrap,
            client_id=t.client_id,
            group_id=group,
            group_instance_id=instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=t.session_timeout_ms,
            heartbeat_interval_ms=max(1000, t.session_timeout_ms // 5),
            max_poll_interval_ms=600_000,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            reconnect_backoff_max_ms=5000,
            bootstrap_timeout_ms=t.bootstrap_timeout_ms,
            **t.options,
        )

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to `max_records` records, waiting up to `timeout_s` for the first.

        Once the group is joined, the client is asked without waiting, and the wait is a sleep between
        empty polls: kafka-python's own wait re-sends a fetch as soon as one comes back empty, and a broker
        that answers an empty fetch at once instead of holding it for `fetch.max.wait.ms` (noida-db) kept
        that loop, and so a consumer with nothing to read, at a full core. While the group is (re)joining,
        kafka-python's own wait: a join cut short by a poll that does not wait starts over, again and
        again."""
        deadline = time.monotonic() + timeout_s
        pause, longest = EMPTY_POLL_PAUSE_S
        while True:
            left = deadline - time.monotonic()
            wait_ms = 0 if self._joined() else max(int(left * 1000), 0)
            batches = self._c.poll(timeout_ms=wait_ms, max_records=max_records)
            left = deadline - time.monotonic()
            if batches or left <= 0:
                break
            if wait_ms == 0:
                time.sleep(min(pause, left))
                pause = min(2 * pause, longest)
        out = [
            Message(tp.topic, tp.partition, m.offset, m.key, m.value)
            for tp, msgs in batches.items()
            for m in msgs
        ]
        return out

    def _joined(self) -> bool:
        """Partitions assigned and no rejoin pending (kafka-python's coordinator; False if it cannot say)."""
        try:
            return bool(self._c.assignment()) and not self._c._coordinator.need_rejoin()
        except Exception:  # another kafka-python, without that attribute: the client's own wait
            return False

    def commit(self) -> None:
        """Commit what was polled. A commit refused because the group rebalanced (a broker restart, a
        worker joining) or a transient broker error is logged, not raised: the records are then delivered
        again to the partition's owner, and the matcher's upsert makes that harmless."""
        from kafka import errors

        # the group changed under this member (a rebalance under way, a new generation, a member id the
        # coordinator forgot): not this batch's fault
        membership = (
            errors.CommitFailedError,
            errors.RebalanceInProgressError,
            errors.IllegalGenerationError,
            errors.UnknownMemberIdError,
        )
        try:
            self._c.commit()
        except membership as exc:
            log.warning("commit refused after a rebalance; the batch will be redelivered: %s", exc)
        except errors.KafkaError as exc:
            if not exc.retriable:
                raise
            log.warning("commit failed (%s); the batch will be redelivered", exc)

    def lag(self) -> dict[tuple[str, int], int]:
        """End offset minus the group's committed offset, per partition this consumer owns now (a partition
        never committed counts from its first offset). Raises KafkaError when the broker does not answer
        within LAG_TIMEOUT_MS."""
        parts = sorted(self._c.assignment() or set())
        if not parts:
            return {}
        end = self._c.end_offsets(parts, timeout_ms=LAG_TIMEOUT_MS)
        committed = {p: self._c.committed(p, timeout_ms=LAG_TIMEOUT_MS) for p in parts}
        never = [p for p in parts if committed[p] is None]
        first = self._c.beginning_offsets(never, timeout_ms=LAG_TIMEOUT_MS) if never else {}
        return {
            (p.topic, p.partition): max(end[p] - (first[p] if committed[p] is None else committed[p]), 0)
            for p in parts
        }

    def delete_committed(self, topics: Collection[str]) -> dict[tuple[str, int], int]:
        """Delete from the broker (DeleteRecords) the records of the partitions of `topics` this consumer
        owns that every consumer group with a committed offset on them has committed; returns how many
        went, per partition. A group that has not committed on a partition does not hold it back: it
        starts from what is left. Raises KafkaError when the broker refuses or does not answer."""
        parts = sorted(p for p in self._c.assignment() or () if p.topic in topics)
        if not parts:
            return {}
        admin = self._admin_client()
        floor: dict = {}
        for g in admin.list_groups():
            group_id = g["group_id"] if isinstance(g, dict) else g[0]
            for p, om in admin.list_group_offsets({group_id: parts}).get(group_id, {}).items():
                if om is not None and om.offset >= 0 and p in parts:
                    floor[p] = min(floor.get(p, om.offset), om.offset)
        unknown = [p for p in floor if p not in self._start]
        if unknown:
            self._start.update(self._c.beginning_offsets(unknown, timeout_ms=LAG_TIMEOUT_MS))
        todo = {p: o for p, o in floor.items() if o > self._start[p]}
        if not todo:
            return {}
        deleted = {}
        for p, result in admin.delete_records(todo).items():
            start = result["low_watermark"] if isinstance(result, dict) else todo[p]
            deleted[(p.topic, p.partition)] = max(start - self._start[p], 0)
            self._start[p] = max(start, self._start[p])
        return deleted

    def _admin_client(self):
        if self._admin is None:
            from kafka import KafkaAdminClient

            t = self._t
            self._admin = KafkaAdminClient(
                bootstrap_servers=t.bootstrap,
                client_id=f"{t.client_id}-admin",
                bootstrap_timeout_ms=t.bootstrap_timeout_ms,
                request_timeout_ms=LAG_TIMEOUT_MS * 5,
                **t.options,
            )
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
        self._c.close(autocommit=False)
        release_instance_id(self._group, self.instance_id)
