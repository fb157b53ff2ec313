"""The consume loop's linger: records that trickle in are handled several to a batch, never more than the
batch size, none lost and each committed once."""

from __future__ import annotations

import threading
import time

from pgr.consume_loop import consume_loop
from pgr.transport import InProcessBus


def _trickle(linger_s: float, n: int = 10, gap_s: float = 0.02) -> list[list[bytes]]:
    """Send `n` records `gap_s` apart while the loop consumes them; the batches it handled."""
    bus = InProcessBus()
    producer, consumer = bus.producer(), bus.consumer(["t"], "g")
    batches: list[list[bytes]] = []
    done = threading.Event()

    def send() -> None:
        for i in range(n):
            producer.send("t", str(i).encode())
            time.sleep(gap_s)
        done.set()

    sender = threading.Thread(target=send)
    sender.start()
    consume_loop(
        consumer,
        lambda b: batches.append([m.value for m in b]),
        threading.Event(),
        done,
        4,
        linger_s=linger_s,
    )
    sender.join()
    assert bus.consumer(["t"], "g").poll(10, 0.05) == []  # every record committed
    return batches


def test_linger_gathers_trickling_records_up_to_the_batch_size():
    batches = _trickle(linger_s=1.0)
    assert [v for b in batches for v in b] == [str(i).encode() for i in range(10)]
    assert max(len(b) for b in batches) <= 4
    assert len(batches) <= 4, batches  # 4 + 4 + 2, give or take a batch split by a slow sender


def test_without_linger_a_record_is_handled_as_soon_as_it_comes():
    batches = _trickle(linger_s=0.0, gap_s=0.1)
    assert [v for b in batches for v in b] == [str(i).encode() for i in range(10)]
    assert len(batches) >= 5, batches  # most records alone: nothing waits for the next
