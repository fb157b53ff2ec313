"""The fault drill (pgr.app.fault_drill), short: 60 small crops and a live camera through ingest, two re-ID
workers and the matcher over Kafka while, one at a time, a re-ID worker and the matcher are SIGKILLed, the
broker is stopped and started, the camera disappears and returns, and malformed records are injected.
Per fault: nothing lost, nothing duplicated, exactly the injected records dead-lettered. The drill starts its
own broker (it restarts it), so it needs noida-db even where PGR_KAFKA_BOOTSTRAP names another."""

from __future__ import annotations

import pytest

from pgr.app.fault_drill import FAULTS, MALFORMED_CROPS, MALFORMED_FEATURES, format_table, run_drill

pytestmark = pytest.mark.kafka


def test_short_drill_loses_and_duplicates_nothing(tmp_path):
    result = run_drill(crops=60, rate=10, outage_s=2, work=tmp_path / "drill", phase_timeout_s=300)
    print(format_table(result))
    assert [r.fault for r in result.rows] == list(FAULTS)
    for r in result.rows:
        assert r.published >= 60 // len(FAULTS), r
        assert (r.lost, r.duplicated, r.dead_lettered) == (0, 0, r.injected), r
        assert r.recovery_s >= 0, r
    camera = next(r for r in result.rows if r.fault == "camera lost")
    assert camera.published > 60 // len(FAULTS), "the camera's own crops are counted in its row"
    assert result.rows[-1].injected == len(MALFORMED_CROPS) + len(MALFORMED_FEATURES)
    assert result.extra_rows == 0 and result.dead_letter_origins_ok and result.ok
