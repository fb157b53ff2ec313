"""The three PGR similarities (Eqs. 2, 4, 5-6): pure, batched torch functions on any device.

The one implementation of each equation in the repo. Every function scores queries against a gallery in
one of two layouts:

- grid: query (Q, ...) against every gallery item (G, ...) -> (Q, G); an unbatched query -> (G,);
- indexed: `index` (Q, K) names K gallery rows per query (a progressive-retrieval candidate list)
  -> (Q, K), without materialising the gathered gallery all at once.

Inputs need not be normalised and may be float16; cosines are computed in float32. Work is split into
chunks of about `chunk_elems` float32 elements so a large gallery never needs a huge temporary.

Edge cases (documented values):
- s_part with no part visible on both sides: Eq. 4 gives 0 / (1 + 0) = 0 (with `global_sim`, the ISP
  reading, it gives s_ins / 1).
- s_pixel with no foreground pixel on either side, or no pair surviving the cycle check: 0.5, i.e. the
  mean cosine is taken as 0. Rationale: "no pixel evidence" should be neutral, not the strongest possible
  evidence against a match (0 would mean cosine -1, which nothing observed supports); and a query without
  foreground then adds the same constant to every candidate, so stage 2 leaves the stage-1 order as is.
- With eps > 0 and pixels on both sides, some pair always survives (the globally most similar pair (i, j)
  has j* = j and i* = i), so "no surviving pair" happens only for eps <= 0.
- s_pixel is asymmetric by definition: the cycle check uses query positions only (gallery positions are
  not needed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_ELEMS = 1 << 24  # ~64 MiB of float32 temporaries per chunk
PIXEL_EPS = 4.0  # cycle-consistency radius in feature cells (Eq. 5)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _squeeze_if(unbatched: bool, x: torch.Tensor) -> torch.Tensor:
    return x[0] if unbatched else x


def s_ins(query: torch.Tensor, gallery: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: s_ins = 1/2 + cos(x_ins^q, x_ins^g) / 2.

    query (Q, d) or (d,); gallery (G, d); index (Q, K) or None. Returns (Q, G), (G,) or (Q, K).
    """
    unbatched = query.dim() == 1
    q = _unit(query.reshape(-1, query.shape[-1]))
    g = _unit(gallery)
    cos = q @ g.T if index is None else torch.einsum("qd,qkd->qk", q, g[index])
    return _squeeze_if(unbatched, 0.5 + 0.5 * cos)


def _part_score(cos: torch.Tensor, both: torch.Tensor, global_sim: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4 from per-part cosines (..., p) and shared visibility (..., p)."""
    shared = both.to(cos.dtype)
    numerator = ((0.5 + 0.5 * cos) * shared).sum(dim=-1)
    if global_sim is not None:
        numerator = numerator + global_sim
    return numerator / (1.0 + shared.sum(dim=-1))


def s_part(
    query_parts: torch.Tensor,
    query_visible: torch.Tensor,
    gallery_parts: torch.Tensor,
    gallery_visible: torch.Tensor,
    index: torch.Tensor | None = None,
    global_sim: torch.Tensor | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """Eq. 4: s_part = sum_k v_k^q v_k^g s_k / (1 + sum_k v_k^q v_k^g), s_k = 1/2 + cos(p_k^q, p_k^g) / 2.

    query_parts (Q, p, d) or (p, d); query_visible (Q, p) or (p,) bool; gallery_parts (G, p, d);
    gallery_visible (G, p) bool; index (Q, K) or None. `global_sim`, shaped like the result, selects the
    ISP reading: s_ins is added to the numerator, (s_ins + sum v v s_k) / (1 + sum v v). Default: Eq. 4 as
    printed. Returns (Q, G), (G,) or (Q, K).
    """
    unbatched = query_parts.dim() == 2
    if unbatched:
        query_parts, query_visible = query_parts[None], query_visible[None]
        global_sim = None if global_sim is None else global_sim[None]
    q = _unit(query_parts)
    qv = query_visible.bool()
    gv = gallery_visible.bool()
    n_q, p, d = q.shape
    if index is None:
        out = q.new_empty(n_q, gallery_parts.shape[0])
        step = max(1, chunk_elems // (p * (d + n_q)))
        for start in range(0, gallery_parts.shape[0], step):
            block = slice(start, start + step)
            cos = torch.einsum("qkd,gkd->qgk", q, _unit(gallery_parts[block]))
            both = qv[:, None, :] & gv[None, block, :]
            glob = None if global_sim is None else global_sim[:, block]
            out[:, block] = _part_score(cos, both, glob)
    else:
        out = q.new_empty(index.shape)
        step = max(1, chunk_elems // (index.shape[1] * p * d))
        for start in range(0, n_q, step):
            rows = slice(start, start + step)
            g = gallery_parts[index[rows]].float()  # (c, K, p, d)
            c, k = g.shape[:2]
            # all part-vs-part dots as one bmm (cheaper than einsum's permuted copy), keep the diagonal
            dots = (
                torch.bmm(g.view(c, k * p, d), q[rows].transpose(1, 2))
                .view(c, k, p, p)
                .diagonal(dim1=2, dim2=3)
            )
            cos = dots / torch.linalg.vector_norm(g, dim=-1).clamp_min(1e-12)
            both = qv[rows, None, :] & gv[index[rows]]
            glob = None if global_sim is None else global_sim[rows]
            out[rows] = _part_score(cos, both, glob)
    return _squeeze_if(unbatched, out)


def s_within(
    instances: torch.Tensor, parts: torch.Tensor, visible: torch.Tensor, a1: float, isp: bool
) -> torch.Tensor:
    """s1 = a1 s_ins + (1 - a1) s_part (Eqs. 2, 4) between every pair of B sets of n items each.

    instances (B, n, d), parts (B, n, p, d), visible (B, n, p) bool; `isp` selects the ISP reading of
    Eq. 4 (as `global_sim` does in `s_part`). Returns (B, n, n), symmetric, 1 on the diagonal (for parts
    and instances that are not all zero).
    """
    x = _unit(instances)
    sim_ins = 0.5 + 0.5 * torch.bmm(x, x.transpose(1, 2))
    if a1 >= 1:
        return sim_ins
    u = _unit(parts)
    cos = torch.einsum("bikd,bjkd->bijk", u, u)
    v = visible.bool()
    both = v[:, :, None, :] & v[:, None, :, :]
    sim_part = _part_score(cos, both, sim_ins if isp else None)
    return a1 * sim_ins + (1 - a1) * sim_part


def pixel_matches(
    xq: torch.Tensor, cq: torch.Tensor, mq: torch.Tensor, xg: torch.Tensor, mg: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cycle-consistent matching of Eq. 5 for B aligned pairs.

    Unit pixels xq (B, n, d) and xg (B, m, d), query coords cq (B, n, 2), masks mq (B, n) and mg (B, m).
    Returns, per query pixel i, (cos(x_i, y_j*), j*, kept), each (B, n).
    """
    cos = torch.bmm(xq, xg.transpose(1, 2))  # (B, n, m)
    cos = cos.masked_fill(~(mq[:, :, None] & mg[:, None, :]), float("-inf"))
    best, j_star = cos.max(dim=2)  # for each query pixel i: j* and cos(x_i, y_j*)
    i_star = cos.argmax(dim=1).gather(1, j_star)  # i* = argmax_i cos(x_i, y_j*)
    back = cq.gather(1, i_star[:, :, None].expand(-1, -1, 2))
    keep = torch.isfinite(best) & ((cq - back).norm(dim=-1) < eps)
    return best, j_star, keep


def _pixel_score(
    xq: torch.Tensor, cq: torch.Tensor, mq: torch.Tensor, xg: torch.Tensor, mg: torch.Tensor, eps: float
) -> torch.Tensor:
    """Eqs. 5-6 for B aligned pairs: unit pixels xq (B, n, d), xg (B, m, d), query coords cq (B, n, 2)."""
    best, _, keep = pixel_matches(xq, cq, mq, xg, mg, eps)
    mean_cos = torch.where(keep, best, 0.0).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
    return 0.5 + 0.5 * mean_cos


def s_pixel(
    query_pixels: torch.Tensor,
    query_coords: torch.Tensor,
    query_mask: torch.Tensor,
    gallery_pixels: torch.Tensor,
    gallery_mask: torch.Tensor,
    index: torch.Tensor | None = None,
    eps: float = PIXEL_EPS,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """Eqs. 5-6: cycle-consistent pixel matching, s_pixel = 1/2 + (mean cosine of kept pairs) / 2.

    For each valid query pixel i: j* = argmax_j cos(x_i, y_j), i* = argmax_i' cos(x_i', y_j*); the pair
    (i, j*) is kept when ||pos(i) - pos(i*)|| < eps (feature cells). Padded layout: query_pixels (Q, n, d)
    or (n, d), query_coords (Q, n, 2) (row, col), query_mask (Q, n) bool; gallery_pixels (G, m, d),
    gallery_mask (G, m). index (Q, K) or None. No valid pixel or no kept pair gives 0.5.
    Returns (Q, G), (G,) or (Q, K).
    """
    unbatched = query_pixels.dim() == 2
    if unbatched:
        query_pixels, query_coords, query_mask = query_pixels[None], query_coords[None], query_mask[None]
    n_q, n, d = query_pixels.shape
    m = gallery_pixels.shape[1]
    if index is None:
        qi = torch.arange(n_q, device=query_pixels.device).repeat_interleave(gallery_pixels.shape[0])
        gi = torch.arange(gallery_pixels.shape[0], device=query_pixels.device).repeat(n_q)
        shape: tuple[int, ...] = (n_q, gallery_pixels.shape[0])
    else:
        qi = torch.arange(n_q, device=query_pixels.device).repeat_interleave(index.shape[1])
        gi = index.reshape(-1)
        shape = tuple(index.shape)
    out = torch.full((qi.numel(),), 0.5, device=query_pixels.device)
    if n == 0 or m == 0:
        return _squeeze_if(unbatched, out.view(shape))
    xq = _unit(query_pixels)
    cq = query_coords.float()
    qm, gm = query_mask.bool(), gallery_mask.bool()
    step = max(1, chunk_elems // (2 * n * m + (n + m) * d))
    for start in range(0, qi.numel(), step):
        a, b = qi[start : start + step], gi[start : start + step]
        used, at = torch.unique(b, return_inverse=True)  # each gallery item normalised once per chunk
        xg = _unit(gallery_pixels[used])[at]
        out[start : start + step] = _pixel_score(xq[a], cq[a], qm[a], xg, gm[b], eps)
    return _squeeze_if(unbatched, out.view(shape))
