"""Stage 3: k-reciprocal re-ranking of the final top n3 (reid.reciprocal) and its place in retrieval."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from reid.reciprocal import reciprocal_distance
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval
from reid.similarity import s_ins, s_part, s_within
from tests.test_retrieval import random_crop_features


def test_reciprocal_neighbours_outrank_a_closer_impostor():
    # the query's nearest item Z sits next to a tight group B of its own, so the query is not among Z's
    # nearest; the four A items are a little farther but have the query among theirs
    e = torch.eye(16)
    a, b, c = e[0], e[1], e[2]
    query = F.normalize(a + 0.3 * c, dim=0)
    impostor = F.normalize(a + 0.3 * c + 0.2 * b, dim=0)
    group_a = F.normalize(a + 0.05 * e[3:7], dim=1)
    group_b = F.normalize(a + 0.3 * c + 0.4 * b + 0.03 * e[7:11], dim=1)
    x = torch.cat([query[None], impostor[None], group_a, group_b])
    sim = 0.5 + 0.5 * x @ x.T
    assert torch.argsort(-sim[0, 1:]).tolist()[0] == 0  # the impostor is nearest before stage 3
    d3 = reciprocal_distance(sim[None], k1=4, k2=1, a3=0.3)[0]
    assert torch.argsort(d3).tolist() == [1, 2, 3, 4, 0, 5, 6, 7, 8]


def test_s_within_is_s1_of_every_pair():
    rng = np.random.default_rng(1)
    g = GalleryFeatures.from_crop_features(random_crop_features(rng, 12))
    for isp in (True, False):
        ins = s_ins(g.instances, g.instances)
        part = s_part(g.parts, g.visibility, g.parts, g.visibility, global_sim=ins if isp else None)
        within = s_within(g.instances[None], g.parts[None], g.visibility[None], 0.3, isp)[0]
        torch.testing.assert_close(within, 0.3 * ins + 0.7 * part, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        s_within(g.instances[None], g.parts[None], g.visibility[None], 1.0, True)[0], ins
    )


def test_stage3_reorders_the_final_top_n3_only():
    rng = np.random.default_rng(2)
    gallery = GalleryFeatures.from_crop_features(random_crop_features(rng, 60))
    query = GalleryFeatures.from_crop_features(random_crop_features(rng, 4))
    plain = RetrievalParams(n1=20, n2=6, a1=0.5, a2=0.9)
    before = progressive_retrieval(query, gallery, plain)
    after = progressive_retrieval(query, gallery, replace(plain, n3=12, k1=4, k2=2))
    assert (after.stage[:, :12] == 3).all() and torch.equal(after.stage[:, 12:], before.stage[:, 12:])
    assert torch.equal(after.indices[:, 12:], before.indices[:, 12:])
    assert torch.equal(after.score[:, 12:], before.score[:, 12:])
    assert (after.score[:, :12].diff(dim=1) <= 0).all()
    assert not torch.equal(after.indices[:, :12], before.indices[:, :12])  # it does re-rank
    for q in range(len(query)):
        assert set(after.indices[q, :12].tolist()) == set(before.indices[q, :12].tolist())
        # each item keeps its own per-granularity scores
        where = {int(i): c for c, i in enumerate(before.indices[q, :12])}
        cols = [where[int(i)] for i in after.indices[q, :12]]
        for name in ("s_ins", "s_part", "s_pixel"):
            torch.testing.assert_close(
                getattr(after, name)[q, :12], getattr(before, name)[q, cols], equal_nan=True
            )
    # n3 = 1 (or 0) leaves progressive retrieval as it was
    same = progressive_retrieval(query, gallery, replace(plain, n3=1))
    assert torch.equal(same.indices, before.indices) and torch.equal(same.stage, before.stage)


def test_fused_rankings_put_a_later_stage_first():
    from matcher.index import IndexedDetection
    from matcher.search import fuse_rankings

    def hit(det_id: str, stage: int, score: float) -> IndexedDetection:
        return IndexedDetection(
            det_id, "cam", 0.0, 0, 0, (0, 0, 1, 1), 1.0, "", "m", 0.0, 0.0, score, stage=stage
        )

    # stage-3 scores (1 - d3) run lower than the s1 of the items after the top n3
    first = [hit("a", 3, 0.61), hit("b", 3, 0.40), hit("c", 1, 0.93)]
    second = [hit("b", 3, 0.55), hit("d", 3, 0.50), hit("a", 1, 0.95)]
    fused = fuse_rankings([first, second], exclude={"d"})
    assert [(h.detection_id, h.stage, h.score) for h in fused] == [
        ("a", 3, 0.61),
        ("b", 3, 0.55),
        ("c", 1, 0.93),
    ]
