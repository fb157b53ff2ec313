"""The PGR trainer: losses, PK sampler, pseudo labels, augmentation, and kill/resume bit-identity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.losses import triplet_loss
from training.pseudo_labels import foreground, identity_part_labels
from training.sampler import pk_batches
from training.train import train
from training.transforms import TrainTransform

IDS, PER_ID = 6, 4


@pytest.fixture(scope="module")
def tiny_market(tmp_path_factory, assets_dir: Path) -> Path:
    """6 train ids x 4 images (2 cameras) + 3 query / gallery ids, cut from the PETS video."""
    cap = cv2.VideoCapture(str(assets_dir / "video" / "pets2009_vtest.mp4"))
    frames = []
    for _ in range(8):
        ok, frame = cap.read()
        assert ok, "cannot read the PETS video"
        frames.append(frame)
        for _ in range(9):
            cap.grab()
    cap.release()
    root = tmp_path_factory.mktemp("data")
    base = root / "market1501"
    fh, fw = frames[0].shape[:2]

    def cut(pid: int, frame: np.ndarray) -> np.ndarray:
        y = (pid * 97) % (fh - 160)
        x = (pid * 211) % (fw - 80)
        return frame[y : y + 160, x : x + 80]

    layout = {
        "bounding_box_train": [(pid, i % 2 + 1, i) for pid in range(1, IDS + 1) for i in range(PER_ID)],
        "query": [(pid, 1, 4) for pid in range(7, 10)],
        "bounding_box_test": [(pid, 2, i) for pid in range(7, 10) for i in (5, 6)],
    }
    for split, items in layout.items():
        (base / split).mkdir(parents=True)
        for n, (pid, cam, f) in enumerate(items):
            cv2.imwrite(str(base / split / f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg"), cut(pid, frames[f]))
    return root


def tiny_config(data: Path, out: Path, **over) -> dict:
    cfg = {
        "data_root": str(data),
        "dataset": "market1501",
        "output_dir": str(out),
        "device": "cpu",
        "input_size": [64, 32],
        "epochs": 2,
        "p": 3,
        "k": 2,
        "pseudo_every": 1,
        "pseudo_batch": 8,
        "optim": {"warmup_epochs": 1},
        "augment": {"pad": 4},
        "eval": {"enabled": False, "batch": 8},
        "progress": False,
    }
    cfg.update(over)
    return cfg


def test_train_runs_and_writes_checkpoints(tiny_market: Path, tmp_path: Path) -> None:
    from reid.pgr_extractor import PGRExtractor

    cfg = tiny_config(tiny_market, tmp_path / "run", eval={"enabled": True, "batch": 8})
    summary = train(cfg)
    history = summary["history"]
    assert len(history) == 2
    for rec in history:
        for key in ("loss", "id", "tri", "part_id", "part_tri", "psi"):
            assert np.isfinite(rec[key]), (key, rec)
    assert history[-1]["loss"] < history[0]["loss"] * 1.5
    assert 0 <= history[-1]["PGR_mAP"] <= 1
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not list((tmp_path / "run").glob("*.tmp"))
    ex = PGRExtractor(
        "mobilenetv2", checkpoint=tmp_path / "run" / "best.pt", device="cpu", input_size=(64, 32)
    )
    feats = ex.extract([np.zeros((64, 32, 3), np.uint8)])
    assert feats[0].instance.shape == (1280,)


def test_kill_and_resume_is_bit_identical(tiny_market: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_market, tmp_path / "full"))
    cfg = tiny_config(tiny_market, tmp_path / "killed")
    train(cfg, stop_after=1)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["epoch"] == 0
    train(cfg, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for part in ("model", "heads"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert torch.equal(a["pseudo_labels"], b["pseudo_labels"])


def test_init_from_starts_from_another_runs_weights(tiny_market: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_market, tmp_path / "first", epochs=1))
    # lr 0: Adam leaves every weight where the run started; only BatchNorm's running statistics move
    frozen = {"lr": 0.0, "warmup_epochs": 0}
    init = str(tmp_path / "first" / "last.pt")
    train(tiny_config(tiny_market, tmp_path / "second", epochs=1, init_from=init, optim=frozen))
    train(tiny_config(tiny_market, tmp_path / "control", epochs=1, optim=frozen))
    a, b, control = (
        torch.load(tmp_path / run / "last.pt", weights_only=False) for run in ("first", "second", "control")
    )
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for part in ("model", "heads"):
        weights = [key for key in a[part] if not key.endswith(stats)]
        assert all(torch.equal(a[part][key], b[part][key]) for key in weights), part
        assert not all(torch.equal(a[part][key], control[part][key]) for key in weights), part


def test_pseudo_labels_on_synthetic_features() -> None:
    n, d, h, w, parts = 3, 16, 12, 6, 3
    gen = torch.Generator().manual_seed(0)
    feats = 0.05 * torch.randn(n, d, h, w, generator=gen)
    body = torch.zeros(h, w, dtype=torch.bool)
    body[2:11, 1:5] = True
    for row in range(2, 11):  # three vertical bands, each with its own direction
        band = (row - 2) // 3
        feats[:, 2 * band, row, 1:5] += 3.0
        feats[:, 2 * band + 1, row, 1:5] += 1.0 + 0.1 * torch.rand(n, 4, generator=gen)
    fg = foreground(feats)
    assert torch.equal(fg, body.expand(n, h, w))
    labels = identity_part_labels(feats, fg, parts, seed=0)
    assert labels.shape == (n, h, w)
    assert (labels[:, ~body.numpy()] == 0).all()
    assert set(np.unique(labels[:, body.numpy()])) == {1, 2, 3}
    rows = np.arange(h)[None, :, None].repeat(n, 0).repeat(w, 2)
    mean_rows = [rows[labels == k].mean() for k in range(1, parts + 1)]
    assert mean_rows == sorted(mean_rows)


def test_triplet_loss_matches_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 7, generator=gen)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4])
    losses = []
    for i in range(len(x)):
        dp = max(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i and y[j] == y[i])
        dn = min(float((x[i] - x[j]).norm()) for j in range(len(x)) if y[j] != y[i])
        losses.append(max(0.0, dp - dn + 0.3))
    assert float(triplet_loss(x, y, 0.3)) == pytest.approx(sum(losses) / len(losses), rel=1e-5, abs=1e-6)


def test_pk_sampler_batches() -> None:
    pids = [i // 5 for i in range(40)] + [8, 9, 9]  # ids 8 and 9 have fewer than K images
    batches = pk_batches(pids, p=4, k=4, seed=3, epoch=2)
    assert batches == pk_batches(pids, p=4, k=4, seed=3, epoch=2)
    assert batches != pk_batches(pids, p=4, k=4, seed=3, epoch=3)
    assert len(batches) >= 3
    for b in batches:
        assert len(b) == 16
        ids = [pids[i] for i in b]
        groups = [ids[j : j + 4] for j in range(0, 16, 4)]
        assert all(len(set(g)) == 1 for g in groups)
        assert len({g[0] for g in groups}) == 4
    assert len(pk_batches(pids, 4, 4, 3, 2, max_batches=2)) == 2


def test_transform_is_seeded_and_keeps_labels_aligned() -> None:
    tf = TrainTransform((64, 32), (4, 2), flip_p=1.0, pad=0, erase_p=0.0)
    image = np.zeros((128, 64, 3), np.uint8)
    image[:, :32] = 255  # left half white
    labels = np.array([[1, 2]] * 4, dtype=np.int8)
    x, lab = tf(image, labels, torch.Generator().manual_seed(0))
    assert x.shape == (3, 64, 32) and x[:, :, 0].mean() < x[:, :, -1].mean()  # flipped
    assert (lab == torch.tensor([[2, 1]] * 4)).all()
    tf = TrainTransform((64, 32), (4, 2))
    a = tf(image, labels, torch.Generator().manual_seed(5))
    b = tf(image, labels, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_evaluate_model_reports_rows_and_writes_figures(tiny_market: Path, tmp_path: Path) -> None:
    """The evaluator end to end on a trained tiny model: every row, the ranking difference, the PNGs."""
    import json

    from training.evaluate_model import main as evaluate_main

    train(tiny_config(tiny_market, tmp_path / "run", epochs=1))
    out, figures = tmp_path / "report.json", tmp_path / "figures"
    args = ["--data", str(tiny_market), "--checkpoint", str(tmp_path / "run" / "best.pt"), "--device", "cpu"]
    args += ["--trivial-queries", "3", "--cache", str(tmp_path / "cache")]
    assert evaluate_main([*args, "--out", str(out), "--figures", str(figures)]) == 0
    report = json.loads(out.read_text())
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # gallery and query features
    assert evaluate_main([*args, "--out", str(tmp_path / "again.json")]) == 0  # from the cache
    again = json.loads((tmp_path / "again.json").read_text())
    for name in ("I", "I+P+Px progressive (ISP reading)"):
        assert again["rows"][name]["mAP"] == report["rows"][name]["mAP"]
    assert report["queries"] == 3 and report["gallery"] == 6
    fg = report["gallery_foreground"]
    assert 0 <= fg["crops_without_foreground"] <= 1 and len(fg["part_visible_fraction"]) == 5
    for name in ("I", "I+P (ISP reading)", "I+P+Px progressive (ISP reading)", "I+P (Eq. 4 as printed)"):
        row = report["rows"][name]
        assert 0 <= row["mAP"] <= 1 and 0 <= row["R1"] <= row["R5"] <= row["R10"] <= 1
    subset = report["rows"]["whole-gallery scoring on the first queries"]
    # With a 6-item gallery N1 = 1000 and N2 = 30 cover it: progressive is the trivial ensemble exactly.
    for reading in ("ISP reading", "Eq. 4 as printed"):
        row = subset[f"trivial vs progressive ({reading})"]
        assert row["trivial_R1"] == row["progressive_R1"] and row["trivial_mAP"] == row["progressive_mAP"]
    diffs = subset["mean ranking difference of true matches"]
    assert set(diffs) == {"s_ins vs s_part", "s_ins vs s_pixel", "s_part vs s_pixel"}
    assert all(0 <= v <= 5 for v in diffs.values())
    from training.results_table import tables

    table = tables(report)
    assert "| I+P+Px progressive (ISP reading) |" in table and "| s_pixel |" in table and "speed-up" in table
    for name in ("cmc_market1501.png", "parts_market1501.png", "pixels_market1501.png"):
        image = cv2.imread(str(figures / name))
        assert image is not None and image.shape[0] > 100 and image.std() > 1, name


def test_ranking_difference_counts_rank_shifts_of_true_matches() -> None:
    from training.datasets import Sample
    from training.evaluate_model import ranking_difference

    gallery = [
        Sample(Path(f"g{i}"), pid, cam) for i, (pid, cam) in enumerate([(1, 2), (2, 2), (1, 1), (3, 2)])
    ]
    query = [Sample(Path("q"), 1, 1)]
    a = torch.tensor([[0.9, 0.8, 0.7, 0.1]])  # true match (pid 1, camera 2) = gallery 0 at rank 0
    b = torch.tensor([[0.1, 0.8, 0.9, 0.7]])  # ... now at rank 3; gallery 2 is same camera: ignored
    assert ranking_difference({"a": a, "b": b}, query, gallery) == {"a vs b": 3.0}
    assert ranking_difference({"a": a, "c": a.clone()}, query, gallery) == {"a vs c": 0.0}


def test_pixel_correspondences_of_a_crop_with_itself(assets_dir: Path) -> None:
    """Against itself every foreground pixel finds itself (cos 1) and survives the cycle check."""
    from reid.pgr_extractor import PGRExtractor
    from training.figures import correspondences

    cap = cv2.VideoCapture(str(assets_dir / "video" / "pets2009_vtest.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    ex = PGRExtractor(
        "mobilenetv2", assets_dir / "weights" / "mobilenetv2_imagenet_features.pt", device="cpu"
    )
    f = ex.extract([frame[100:260, 200:280]])[0]
    src, dst, cos = correspondences(f, f)
    assert len(src) == len(f.pixels) > 0
    np.testing.assert_array_equal(src, dst)
    np.testing.assert_allclose(cos, 1.0, atol=2e-3)
