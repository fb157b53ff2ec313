"""The in-process bus of the embedded mode is bounded: a live camera that outruns a slow matcher waits for it
(back-pressure), and records every group has committed are released, so memory stays under a ceiling."""

from __future__ import annotations

import threading
import time
import tracemalloc

from pgr.consume_loop import consume_loop
from pgr.transport import InProcessBus

RECORD_BYTES = 60_000  # a crop record of a live camera
RECORDS = 3000  # 180 MB if the bus kept them all


def test_live_camera_and_slow_matcher_stay_under_a_memory_ceiling():
    bus, stop = InProcessBus(), threading.Event()
    producer = bus.producer()
    consumer = bus.consumer(["crops"], "matcher")  # the matcher joins before the camera starts
    handled: list[int] = []

    def slow_matcher(batch) -> None:
        time.sleep(0.0005 * len(batch))
        handled.extend(m.offset for m in batch)

    def live_camera() -> None:
        for i in range(RECORDS):
            producer.send("crops", i.to_bytes(4, "big") + bytes(RECORD_BYTES - 4))

    tracemalloc.start()
    try:
        matcher = threading.Thread(target=consume_loop, args=(consumer, slow_matcher, stop))
        camera = threading.Thread(target=live_camera)
        t0 = time.perf_counter()
        matcher.start()
        camera.start()
        camera.join(timeout=120)
        deadline = time.monotonic() + 60
        while len(handled) < RECORDS and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        matcher.join(timeout=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    print(f"{RECORDS} records of {RECORD_BYTES} B in {elapsed:.1f}s: peak traced {peak / 1e6:.1f} MB")
    assert handled == list(range(RECORDS)), "every record delivered once, in order"
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB: the bus keeps what was already committed"
    assert bus.lag("crops", "matcher") == 0 and bus.records("crops") == []  # all released


def test_uncommitted_records_stay_for_the_next_consumer_of_the_group():
    bus = InProcessBus(capacity=4)
    producer = bus.producer()
    first = bus.consumer(["t"], "g")
    for i in range(3):
        producer.send("t", bytes([i]))
    assert [m.value for m in first.poll(10, 0.1)] == [b"\x00", b"\x01", b"\x02"]
    first.commit()
    producer.send("t", b"\x03")
    assert [m.value for m in first.poll(10, 0.1)] == [b"\x03"]  # polled, then the consumer "crashes"
    again = bus.consumer(["t"], "g")
    assert [(m.offset, m.value) for m in again.poll(10, 0.1)] == [(3, b"\x03")]
    assert [m.offset for m in bus.records("t")] == [3]  # committed records are released


def test_a_full_topic_makes_the_producer_wait_until_stopped():
    stop = threading.Event()
    bus = InProcessBus(capacity=2, stop=stop)
    bus.consumer(["t"], "g")
    producer = bus.producer()
    producer.send("t", b"1")
    producer.send("t", b"2")
    sent = threading.Event()
    blocked = threading.Thread(target=lambda: (producer.send("t", b"3"), sent.set()))
    blocked.start()
    assert not sent.wait(0.5), "back-pressure: the third record waits for the consumer"
    stop.set()  # a stopping pipeline never deadlocks: the record is kept, not lost
    assert sent.wait(2)
    assert [m.value for m in bus.records("t")] == [b"1", b"2", b"3"]
