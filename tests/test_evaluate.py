"""CMC/mAP on hand-computed cases and against scikit-learn's average precision; dataset name parsing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from training.datasets import load_dataset, parse_name
from training.evaluate import evaluate_rank


def test_hand_computed_case():
    # one query (pid 1, cam 0); gallery ranked by distance: g0 pid 2, g1 pid 1 cam 0 (same view: removed),
    # g2 pid 1 cam 1, g3 pid 3, g4 pid 1 cam 2  ->  valid ranking: [2, 1, 3, 1] with matches at ranks 2, 4
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    r = evaluate_rank(dist, [1], [2, 1, 1, 3, 1], [0], [0, 0, 1, 0, 2], max_rank=4)
    assert r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_queries_without_a_valid_match_are_skipped():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    r = evaluate_rank(dist, [1, 5], [1, 2], [0, 0], [1, 0], max_rank=2)
    assert r.num_valid_queries == 1 and r.rank(1) == 1.0


def test_map_agrees_with_scikit_learn_on_random_cases():
    rng = np.random.default_rng(0)
    q, g = 30, 200
    q_pids, g_pids = rng.integers(0, 10, q), rng.integers(0, 10, g)
    q_cams, g_cams = rng.integers(0, 3, q), rng.integers(0, 3, g)
    dist = rng.random((q, g))
    r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    aps = []
    for i in range(q):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        truth = g_pids[keep] == q_pids[i]
        if truth.any():
            aps.append(average_precision_score(truth, -dist[i, keep]))
    assert r.num_valid_queries == len(aps)
    assert r.mAP == pytest.approx(np.mean(aps), abs=1e-9)


def test_names_and_protocol(tmp_path):
    assert parse_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_name("0005_c2_f0046985.jpg") == (5, 1)
    assert parse_name("-1_c3s1_000401_03.jpg") == (-1, 2)
    with pytest.raises(ValueError, match="not a Market"):
        parse_name("readme.txt")
    base = tmp_path / "market1501"
    names = {
        "bounding_box_train": ["0007_c1s1_1.jpg", "0003_c2s1_1.jpg", "0003_c1s1_2.jpg"],
        "query": ["0003_c1s1_9.jpg"],
        "bounding_box_test": ["0003_c2s1_5.jpg", "0000_c1s1_5.jpg", "-1_c1s1_5.jpg"],
    }
    for split, files in names.items():
        (base / split).mkdir(parents=True)
        for f in files:
            (base / split / f).write_bytes(b"")
    ds = load_dataset(tmp_path, "market1501")
    assert sorted((s.pid, s.camid) for s in ds.train) == [(0, 0), (0, 1), (1, 0)]  # 3 -> 0, 7 -> 1
    assert [s.pid for s in ds.gallery] == [0, 3]  # distractor kept, junk dropped
    assert ds.num_train_pids == 2
