"""Each batched PGR similarity equals a loop-by-loop transcription of its equation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.similarity import s_ins, s_part, s_pixel

P, D, H, W = 5, 16, 16, 8


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def naive_s_ins(q: np.ndarray, g: np.ndarray) -> float:
    return 0.5 + 0.5 * cos(q, g)


def naive_s_part(qp, qv, gp, gv, glob: float | None = None) -> float:
    num, den = 0.0, 1.0
    for k in range(len(qp)):
        if qv[k] and gv[k]:
            num += 0.5 + 0.5 * cos(qp[k], gp[k])
            den += 1.0
    if glob is not None:
        num += glob
    return num / den


def naive_s_pixel(x: np.ndarray, pos: np.ndarray, y: np.ndarray, eps: float = 4.0) -> tuple[float, int]:
    """Eqs. 5-6 over unpadded pixel lists; also returns how many pairs the cycle check dropped."""
    kept, dropped = [], 0
    if len(x) == 0 or len(y) == 0:
        return 0.5, 0  # documented convention: no pixel evidence
    for i in range(len(x)):
        row = [cos(x[i], y[j]) for j in range(len(y))]
        j_star = int(np.argmax(row))
        i_star = int(np.argmax([cos(x[a], y[j_star]) for a in range(len(x))]))
        if np.linalg.norm(pos[i] - pos[i_star]) < eps:
            kept.append(row[j_star])
        else:
            dropped += 1
    return (0.5 + 0.5 * float(np.mean(kept)) if kept else 0.5), dropped


def random_pixels(rng: np.random.Generator, count: int, n_max: int):
    """Pixel sets with `count` items of 0..n_max pixels, padded with garbage the mask must hide."""
    sizes = rng.integers(0, n_max + 1, size=count)
    sizes[0] = n_max
    feats = rng.normal(size=(count, n_max, D)).astype(np.float32)
    coords = np.zeros((count, n_max, 2), dtype=np.int16)
    mask = np.zeros((count, n_max), dtype=bool)
    for i, n in enumerate(sizes):
        cells = rng.choice(H * W, size=n_max, replace=False)
        coords[i] = np.stack([cells // W, cells % W], axis=1)
        mask[i, :n] = True
    return feats, coords, mask, sizes


def test_s_ins_matches_equation_2():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(3, D)), rng.normal(size=(7, D))
    got = s_ins(torch.tensor(q), torch.tensor(g)).numpy()
    want = np.array([[naive_s_ins(a, b) for b in g] for a in q])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(s_ins(torch.tensor(q[1]), torch.tensor(g)).numpy(), want[1], atol=1e-5)
    index = torch.tensor([[6, 0], [3, 3], [1, 2]])
    np.testing.assert_allclose(
        s_ins(torch.tensor(q), torch.tensor(g), index).numpy(),
        np.take_along_axis(want, index.numpy(), 1),
        atol=1e-5,
    )
    # symmetric, and identical inputs score 1
    np.testing.assert_allclose(s_ins(torch.tensor(g), torch.tensor(q)).numpy(), want.T, atol=1e-5)
    assert s_ins(torch.tensor(q[0]), torch.tensor(q[:1])).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("global_reading", [False, True])
def test_s_part_matches_equation_4(global_reading: bool):
    rng = np.random.default_rng(1)
    qp, gp = rng.normal(size=(4, P, D)), rng.normal(size=(9, P, D))
    qv, gv = rng.random((4, P)) < 0.6, rng.random((9, P)) < 0.6
    qv[0], gv[0] = [True, False, True, False, False], [False, True, False, True, True]  # nothing shared
    qv[1, 2], gv[2, 2] = True, False  # part 2 seen on one side only
    glob = rng.random((4, 9)) if global_reading else None
    want = np.array(
        [
            [naive_s_part(qp[a], qv[a], gp[b], gv[b], None if glob is None else glob[a, b]) for b in range(9)]
            for a in range(4)
        ]
    )
    t = [torch.tensor(v) for v in (qp, qv, gp, gv)]
    gs = None if glob is None else torch.tensor(glob, dtype=torch.float32)
    np.testing.assert_allclose(s_part(*t, global_sim=gs).numpy(), want, atol=1e-5)
    np.testing.assert_allclose(s_part(*t, global_sim=gs, chunk_elems=1).numpy(), want, atol=1e-5)
    index = torch.tensor([[0, 8, 8], [2, 1, 0], [5, 4, 3], [7, 6, 0]])
    gi = None if gs is None else gs.gather(1, index)
    np.testing.assert_allclose(
        s_part(*t, index=index, global_sim=gi, chunk_elems=1).numpy(),
        np.take_along_axis(want, index.numpy(), 1),
        atol=1e-5,
    )
    # no shared part: 0 under Eq. 4, s_ins under the ISP reading
    assert want[0, 0] == pytest.approx(0.0 if glob is None else glob[0, 0])
    # symmetric
    np.testing.assert_allclose(
        s_part(t[2], t[3], t[0], t[1], global_sim=None if gs is None else gs.T).numpy(), want.T, atol=1e-5
    )


def test_s_part_identical_inputs():
    parts, vis = torch.randn(1, P, D), torch.tensor([[True, True, False, True, True]])
    # Eq. 4 as printed: n shared parts give n / (1 + n); the ISP reading (s_ins = 1 added) gives 1
    assert s_part(parts[0], vis[0], parts, vis).item() == pytest.approx(4 / 5, abs=1e-6)
    assert s_part(parts[0], vis[0], parts, vis, global_sim=torch.ones(1)).item() == pytest.approx(
        1.0, abs=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_s_pixel_matches_equations_5_6(dtype: torch.dtype):
    rng = np.random.default_rng(2)
    qx, qc, qm, qn = random_pixels(rng, 4, 12)
    gx, gc, gm, gn = random_pixels(rng, 6, 10)
    qn[3] = 0  # a query without foreground
    qm[3] = False
    gn[4] = 0  # a gallery item without foreground
    gm[4] = False
    qx16, gx16 = (torch.tensor(v).to(dtype).double().numpy() for v in (qx, gx))
    want, dropped = np.zeros((4, 6)), 0
    for a in range(4):
        for b in range(6):
            want[a, b], d = naive_s_pixel(qx16[a, : qn[a]], qc[a, : qn[a]].astype(float), gx16[b, : gn[b]])
            dropped += d
    assert dropped > 0, "the random case should exercise the cycle check"
    args = (
        torch.tensor(qx).to(dtype),
        torch.tensor(qc),
        torch.tensor(qm),
        torch.tensor(gx).to(dtype),
        torch.tensor(gm),
    )
    np.testing.assert_allclose(s_pixel(*args).numpy(), want, atol=1e-5)
    np.testing.assert_allclose(s_pixel(*args, chunk_elems=1).numpy(), want, atol=1e-5)
    index = torch.tensor([[5, 0], [4, 4], [2, 1], [0, 3]])
    np.testing.assert_allclose(
        s_pixel(*args, index=index).numpy(), np.take_along_axis(want, index.numpy(), 1), atol=1e-5
    )
    single = s_pixel(args[0][1], args[1][1], args[2][1], args[3], args[4])
    np.testing.assert_allclose(single.numpy(), want[1], atol=1e-5)
    # no foreground pixel on either side: 0.5
    np.testing.assert_allclose(want[3], 0.5)
    np.testing.assert_allclose(want[:, 4], 0.5)


def test_s_pixel_edge_cases():
    x = torch.randn(1, 10, D)
    cells = torch.randperm(H * W)[:10]
    pos = torch.stack([cells // W, cells % W], dim=1)[None].to(torch.int16)
    mask = torch.ones(1, 10, dtype=torch.bool)
    # identical inputs: every pixel matches itself, s = 1, both ways
    assert s_pixel(x, pos, mask, x, mask).item() == pytest.approx(1.0, abs=1e-5)
    # with eps > 0 the globally best pair always survives; eps = 0 keeps no pair: 0.5
    y = torch.randn(1, 7, D)
    ym = torch.ones(1, 7, dtype=torch.bool)
    assert s_pixel(x, pos, mask, y, ym, eps=0.0).item() == 0.5
    want, _ = naive_s_pixel(x[0].double().numpy(), pos[0].double().numpy(), y[0].double().numpy(), eps=0.0)
    assert want == 0.5
    # empty padded dimension (no item has any pixel)
    empty = torch.zeros(2, 0, D)
    no = torch.zeros(2, 0, dtype=torch.bool)
    assert s_pixel(x, pos, mask, empty, no).tolist() == [[0.5, 0.5]]
    # a hand-made dropped pair: both query pixels prefer y0, which is closest to the far-away pixel 0
    xq = torch.tensor([[[1.0, 0.0], [0.8, 0.6]]])
    pq = torch.tensor([[[0, 0], [10, 0]]], dtype=torch.int16)
    yg = torch.tensor([[[1.0, 0.1]]])
    got = s_pixel(xq, pq, torch.ones(1, 2, dtype=torch.bool), yg, torch.ones(1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(0.5 + 0.5 * cos(np.array([1.0, 0.0]), np.array([1.0, 0.1])), abs=1e-6)
