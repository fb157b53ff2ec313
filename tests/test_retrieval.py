"""Progressive retrieval: stage layout, and exact agreement with the trivial ensemble at N1 = N2 = G."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgr.messages import CropFeatures
from reid.retrieval import (
    GalleryFeatures,
    RetrievalParams,
    progressive_retrieval,
    stage1_score,
    trivial_ensemble,
)

P, D, DP, H, W = 5, 32, 16, 16, 8


def random_crop_features(rng: np.random.Generator, count: int) -> list[CropFeatures]:
    out = []
    for _ in range(count):
        n = int(rng.integers(0, 20))
        cells = rng.choice(H * W, size=n, replace=False)
        out.append(
            CropFeatures(
                instance=rng.normal(size=D).astype(np.float32),
                parts=rng.normal(size=(P, D)).astype(np.float16),
                part_visibility=rng.random(P) < 0.7,
                pixels=rng.normal(size=(n, DP)).astype(np.float16),
                pixel_coords=np.stack([cells // W, cells % W], axis=1).astype(np.int16),
            )
        )
    return out


@pytest.fixture(scope="module")
def data() -> tuple[GalleryFeatures, GalleryFeatures]:
    rng = np.random.default_rng(0)
    gallery = GalleryFeatures.from_crop_features(
        random_crop_features(rng, 60), ids=[f"g{i}" for i in range(60)]
    )
    return GalleryFeatures.from_crop_features(random_crop_features(rng, 5)), gallery


def test_from_crop_features_pads(data):
    _, gallery = data
    assert gallery.pixels.shape[1] == int(gallery.pixel_mask.sum(1).max())
    assert gallery.pixels.dtype == torch.float16 and gallery.pixel_coords.dtype == torch.int16
    assert bool((gallery.pixels[~gallery.pixel_mask] == 0).all())
    sub = gallery.select([3, 1])
    assert sub.ids == ["g3", "g1"] and torch.equal(sub.instances, gallery.instances[[3, 1]])
    with pytest.raises(ValueError, match="pixel_mask"):
        GalleryFeatures(
            gallery.instances,
            gallery.parts,
            gallery.visibility,
            gallery.pixels,
            gallery.pixel_coords,
            gallery.pixel_mask[:, :1],
        )
    with pytest.raises(ValueError, match="needs parts"):
        GalleryFeatures.from_crop_features([CropFeatures(instance=np.zeros(D, np.float32))])


@pytest.mark.parametrize("part_score", ["eq4", "isp"])
def test_progressive_equals_trivial_when_n1_n2_cover_the_gallery(data, part_score: str):
    query, gallery = data
    params = RetrievalParams(n1=len(gallery), n2=len(gallery), part_score=part_score)
    prog, triv = progressive_retrieval(query, gallery, params), trivial_ensemble(query, gallery, params)
    assert torch.equal(prog.indices, triv.indices)
    torch.testing.assert_close(prog.score, triv.score, atol=1e-6, rtol=0)
    torch.testing.assert_close(prog.s_pixel, triv.s_pixel, atol=1e-6, rtol=0)
    assert prog.ranked_ids(gallery)[0][0] == gallery.ids[int(triv.indices[0, 0])]


def test_progressive_stages(data):
    query, gallery = data
    params = RetrievalParams(n1=20, n2=6)
    res = progressive_retrieval(query, gallery, params)
    triv = trivial_ensemble(query, gallery, params)  # all per-item scores, for reference
    assert res.indices.shape == (len(query), len(gallery))
    assert (
        (res.stage[:, :6] == 2).all() and (res.stage[:, 6:20] == 1).all() and (res.stage[:, 20:] == 0).all()
    )
    for q in range(len(query)):
        row = res.indices[q]
        assert sorted(row.tolist()) == list(range(len(gallery)))
        by_ins = torch.argsort(triv.s_ins[q], descending=True)
        ins_rank = triv.indices[q][by_ins]
        assert set(row[:20].tolist()) == set(ins_rank[:20].tolist())  # stage 1 re-ranks the s_ins top N1
        assert torch.equal(row[20:], ins_rank[20:])  # the rest stays in s_ins order
        assert (res.score[q, :6].diff() <= 0).all() and (res.score[q, 6:20].diff() <= 0).all()
        s1 = stage1_score(res.s_ins[q, :20], res.s_part[q, :20], params.a1)
        assert s1[:6].min() >= s1[6:20].max()  # stage 2 re-ranks the s1 top N2
    assert res.s_pixel[:, 6:].isnan().all() and res.s_part[:, 20:].isnan().all()
