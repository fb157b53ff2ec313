"""Progressive-granularity retrieval (PGR) and the trivial ensemble it approximates.

Progressive: rank the whole gallery by s_ins; re-rank the top N1 by s1 = a1 s_ins + (1 - a1) s_part;
re-rank the top N2 of those by s2 = a2 s1 + (1 - a2) s_pixel. The final order is the top N2 by s2, then
ranks N2..N1 by s1, then the rest by s_ins. Optionally (N3 > 1, off unless asked: the matcher's config
turns it on) a third stage re-ranks the final top N3 among themselves by k-reciprocal neighbours
(`reid.reciprocal`), s3 = 1 - d3. The trivial ensemble scores the whole gallery with
s = a2 (a1 s_ins + (1 - a1) s_part) + (1 - a2) s_pixel; with N1 = N2 = gallery size both agree.

>>> gallery = GalleryFeatures.from_crop_features(extractor.extract(crops))  # doctest: +SKIP
>>> result = progressive_retrieval(gallery.select([0]), gallery)  # doctest: +SKIP
>>> result.ranked_ids(gallery)[0][:5]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from pgr.messages import CropFeatures
from pgr.settings import MatcherSettings, PartScore
from reid.reciprocal import reciprocal_distance
from reid.similarity import PIXEL_EPS, s_ins, s_part, s_pixel, s_within


@dataclass
class GalleryFeatures:
    """PGR features of G crops as padded tensors (also used for a batch of queries).

    Pixel sets of different sizes are padded to n = the largest set; `pixel_mask` marks the real ones.
    """

    instances: torch.Tensor  # (G, d)
    parts: torch.Tensor  # (G, p, d)
    visibility: torch.Tensor  # (G, p) bool
    pixels: torch.Tensor  # (G, n, dp)
    pixel_coords: torch.Tensor  # (G, n, 2) (row, col), int
    pixel_mask: torch.Tensor  # (G, n) bool
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        g = self.instances.shape[0]
        checks = {
            "instances": (self.instances.dim() == 2, "(G, d)"),
            "parts": (self.parts.dim() == 3 and self.parts.shape[0] == g, "(G, p, d)"),
            "visibility": (self.visibility.shape == self.parts.shape[:2], "(G, p)"),
            "pixels": (self.pixels.dim() == 3 and self.pixels.shape[0] == g, "(G, n, dp)"),
            "pixel_coords": (self.pixel_coords.shape == (*self.pixels.shape[:2], 2), "(G, n, 2)"),
            "pixel_mask": (self.pixel_mask.shape == self.pixels.shape[:2], "(G, n)"),
        }
        for name, (ok, want) in checks.items():
            if not ok:
                raise ValueError(
                    f"GalleryFeatures.{name} has shape {tuple(getattr(self, name).shape)}, need {want}"
                )
        if self.ids is not None and len(self.ids) != g:
            raise ValueError(f"{len(self.ids)} ids for {g} items")

    def __len__(self) -> int:
        return self.instances.shape[0]

    @classmethod
    def from_crop_features(
        cls,
        features: Sequence[CropFeatures],
        ids: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> GalleryFeatures:
        """Stack and pad per-crop features (which must all carry parts and pixels, i.e. come from PGR)."""
        if not features:
            raise ValueError("no features to stack")
        parts, visible, pixels, coords = [], [], [], []
        for f in features:
            if f.parts is None or f.part_visibility is None or f.pixels is None or f.pixel_coords is None:
                raise ValueError("every CropFeatures needs parts, part_visibility, pixels and pixel_coords")
            parts.append(f.parts)
            visible.append(f.part_visibility)
            pixels.append(f.pixels)
            coords.append(f.pixel_coords)
        g, n = len(features), max(len(p) for p in pixels)
        padded = np.zeros((g, n, pixels[0].shape[1]), dtype=pixels[0].dtype)
        padded_coords = np.zeros((g, n, 2), dtype=np.int16)
        mask = np.zeros((g, n), dtype=bool)
        for i, (p, c) in enumerate(zip(pixels, coords, strict=True)):
            padded[i, : len(p)], padded_coords[i, : len(p)], mask[i, : len(p)] = p, c, True
        return cls(
            instances=torch.from_numpy(np.stack([f.instance for f in features])).to(device),
            parts=torch.from_numpy(np.stack(parts)).to(device),
            visibility=torch.from_numpy(np.stack(visible)).bool().to(device),
            pixels=torch.from_numpy(padded).to(device),
            pixel_coords=torch.from_numpy(padded_coords).to(device),
            pixel_mask=torch.from_numpy(mask).to(device),
            ids=None if ids is None else list(ids),
        )

    def select(self, rows: Sequence[int] | torch.Tensor) -> GalleryFeatures:
        """The items at `rows`, e.g. to use some gallery items as queries."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.instances.device)
        tensors = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "ids"}
        ids = None if self.ids is None else [self.ids[i] for i in idx.tolist()]
        return GalleryFeatures(**tensors, ids=ids)

    def to(self, device: str | torch.device) -> GalleryFeatures:
        tensors = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "ids"}
        return GalleryFeatures(**tensors, ids=self.ids)


_MATCHER = MatcherSettings.model_fields


@dataclass(frozen=True)
class RetrievalParams:
    """Progressive retrieval settings, named as `matcher.*` in the config and defaulting to those settings'
    defaults (the paper's N1, a1, N2, a2; eps is the paper's too)."""

    n1: int = _MATCHER["n1"].default
    a1: float = _MATCHER["a1"].default
    n2: int = _MATCHER["n2"].default
    a2: float = _MATCHER["a2"].default
    eps: float = PIXEL_EPS  # s_pixel cycle radius, feature cells
    # isp: the ISP reading of Eq. 4, s_part = (s_ins + sum_k v s_k) / (1 + sum_k v); eq4: Eq. 4 as printed
    # (no global term). The ISP reading is the default: on Market-1501 it keeps the part stage near the
    # instance ranking where the printed form drops it far below (RESULTS.md, "Eq. 4: two readings").
    part_score: PartScore = _MATCHER["part_score"].default
    # k-reciprocal re-ranking of the final top n3 (reid.reciprocal): off here (n3 = 0) so that PGR alone
    # is what a plain RetrievalParams() ranks; the matcher's settings turn it on for searches
    n3: int = 0
    a3: float = _MATCHER["a3"].default
    k1: int = _MATCHER["k1"].default
    k2: int = _MATCHER["k2"].default

    @classmethod
    def search_defaults(cls) -> RetrievalParams:
        """What a search ranks with under the matcher's default settings (stage 3 on)."""
        return cls(n3=_MATCHER["n3"].default)

    @classmethod
    def from_settings(cls, matcher: MatcherSettings) -> RetrievalParams:
        """The retrieval settings of a validated matcher config."""
        return cls(
            matcher.n1,
            matcher.a1,
            matcher.n2,
            matcher.a2,
            part_score=matcher.part_score,
            n3=matcher.n3,
            a3=matcher.a3,
            k1=matcher.k1,
            k2=matcher.k2,
        )


@dataclass
class RetrievalResult:
    """Rankings of the gallery for Q queries, best first; every tensor is (Q, L).

    `score` is the score that placed the item (s3 for stage 3, s2 for stage 2, s1 for stage 1, s_ins for
    stage 0), so scores are comparable within a stage only. s_part / s_pixel are NaN where that stage did
    not run.
    """

    indices: torch.Tensor  # gallery rows, long
    score: torch.Tensor
    stage: torch.Tensor  # int8: 3, 2, 1 or 0
    s_ins: torch.Tensor
    s_part: torch.Tensor
    s_pixel: torch.Tensor

    def ranked_ids(self, gallery: GalleryFeatures) -> list[list[str]]:
        """The ranked gallery ids per query (the gallery must carry ids)."""
        if gallery.ids is None:
            raise ValueError("the gallery has no ids")
        return [[gallery.ids[i] for i in row] for row in self.indices.tolist()]


def stage1_score(sim_ins: torch.Tensor, sim_part: torch.Tensor, a1: float) -> torch.Tensor:
    """s1 = a1 s_ins + (1 - a1) s_part."""
    return a1 * sim_ins + (1 - a1) * sim_part


def stage2_score(s1: torch.Tensor, sim_pixel: torch.Tensor, a2: float) -> torch.Tensor:
    """s2 = a2 s1 + (1 - a2) s_pixel."""
    return a2 * s1 + (1 - a2) * sim_pixel


def _sort(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def reciprocal_rerank(
    gallery: GalleryFeatures, top: torch.Tensor, score: torch.Tensor, params: RetrievalParams, chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3: (order (Q, K), s3 (Q, K) in that order) of the candidates `top` (Q, K gallery rows, best
    first) that scored `score` against their query, re-ranked by k-reciprocal neighbours among themselves.
    The candidates' similarity to each other is s1 (a1 s_ins + (1 - a1) s_part)."""
    q, k = top.shape
    orders, scores = [], []
    for start in range(0, q, chunk):
        rows = top[start : start + chunk]
        c = rows.shape[0]
        sim = torch.ones(c, k + 1, k + 1, device=gallery.instances.device)
        sim[:, 1:, 1:] = s_within(
            gallery.instances[rows],
            gallery.parts[rows],
            gallery.visibility[rows],
            params.a1,
            isp=params.part_score == "isp",
        )
        sim[:, 0, 1:] = sim[:, 1:, 0] = score[start : start + chunk].float()
        s3 = 1 - reciprocal_distance(sim, params.k1, params.k2, params.a3)
        order = _sort(s3)
        orders.append(order)
        scores.append(s3.gather(1, order))
    return torch.cat(orders), torch.cat(scores)


PixelLoader = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


def progressive_retrieval(
    query: GalleryFeatures,
    gallery: GalleryFeatures,
    params: RetrievalParams = RetrievalParams(),
    pixels: PixelLoader | None = None,
) -> RetrievalResult:
    """Rank the gallery for each query by progressive-granularity retrieval (full ranking, L = G).

    `pixels`, when given, supplies the pixel sets of the stage-2 candidates only: called with their gallery
    rows, it returns their (pixels (K, m, d'), pixel_mask (K, m)), so a gallery read from disk need not
    load the pixels of every candidate (the gallery's own pixel tensors are then not used).
    """
    n1 = min(params.n1, len(gallery))
    n2 = min(params.n2, n1)
    sim_ins = s_ins(query.instances, gallery.instances)  # (Q, G)
    order = _sort(sim_ins)
    cand = order[:, :n1]
    ins1 = sim_ins.gather(1, cand)
    part1 = s_part(
        query.parts,
        query.visibility,
        gallery.parts,
        gallery.visibility,
        index=cand,
        global_sim=ins1 if params.part_score == "isp" else None,
    )
    s1 = stage1_score(ins1, part1, params.a1)
    o1 = _sort(s1)
    cand, ins1, part1, s1 = (t.gather(1, o1) for t in (cand, ins1, part1, s1))
    top = cand[:, :n2]
    if pixels is None:
        gallery_pixels, gallery_mask, at = gallery.pixels, gallery.pixel_mask, top
    else:  # load the stage-2 candidates' pixels only, and index them in the order loaded
        rows, at = torch.unique(top, return_inverse=True)
        gallery_pixels, gallery_mask = pixels(rows.tolist())
    pix2 = s_pixel(
        query.pixels,
        query.pixel_coords,
        query.pixel_mask,
        gallery_pixels,
        gallery_mask,
        index=at,
        eps=params.eps,
    )
    s2 = stage2_score(s1[:, :n2], pix2, params.a2)
    o2 = _sort(s2)
    top, s2, pix2 = (t.gather(1, o2) for t in (top, s2, pix2))
    rest = order[:, n1:]
    nan = torch.full_like(sim_ins, float("nan"))
    stage = torch.zeros_like(order, dtype=torch.int8)
    stage[:, :n2], stage[:, n2:n1] = 2, 1
    # the top n1 in their final order, then the rest by s_ins
    head = torch.cat([top, cand[:, n2:]], dim=1)
    columns = {
        "score": torch.cat([s2, s1[:, n2:]], dim=1),
        "s_ins": torch.cat([ins1.gather(1, o2), ins1[:, n2:]], dim=1),
        "s_part": torch.cat([part1.gather(1, o2), part1[:, n2:]], dim=1),
        "s_pixel": torch.cat([pix2, nan[:, n2:n1]], dim=1),
    }
    n3 = min(params.n3, n1)
    if n3 > 1:
        o3, s3 = reciprocal_rerank(gallery, head[:, :n3], columns["score"][:, :n3], params)
        head = torch.cat([head[:, :n3].gather(1, o3), head[:, n3:]], dim=1)
        for name, col in columns.items():
            columns[name] = torch.cat([col[:, :n3].gather(1, o3), col[:, n3:]], dim=1)
        columns["score"][:, :n3] = s3
        stage[:, :n3] = 3
    return RetrievalResult(
        indices=torch.cat([head, rest], dim=1),
        score=torch.cat([columns["score"], sim_ins.gather(1, rest)], dim=1),
        stage=stage,
        s_ins=torch.cat([columns["s_ins"], sim_ins.gather(1, rest)], dim=1),
        s_part=torch.cat([columns["s_part"], nan[:, n1:]], dim=1),
        s_pixel=torch.cat([columns["s_pixel"], nan[:, n1:]], dim=1),
    )


def trivial_ensemble(
    query: GalleryFeatures, gallery: GalleryFeatures, params: RetrievalParams = RetrievalParams()
) -> RetrievalResult:
    """The reference: every metric on the whole gallery, a2 (a1 s_ins + (1-a1) s_part) + (1-a2) s_pixel."""
    sim_ins = s_ins(query.instances, gallery.instances)
    sim_part = s_part(
        query.parts,
        query.visibility,
        gallery.parts,
        gallery.visibility,
        global_sim=sim_ins if params.part_score == "isp" else None,
    )
    sim_pixel = s_pixel(
        query.pixels, query.pixel_coords, query.pixel_mask, gallery.pixels, gallery.pixel_mask, eps=params.eps
    )
    score = stage2_score(stage1_score(sim_ins, sim_part, params.a1), sim_pixel, params.a2)
    order = _sort(score)
    return RetrievalResult(
        indices=order,
        score=score.gather(1, order),
        stage=torch.full_like(order, 2, dtype=torch.int8),
        s_ins=sim_ins.gather(1, order),
        s_part=sim_part.gather(1, order),
        s_pixel=sim_pixel.gather(1, order),
    )
