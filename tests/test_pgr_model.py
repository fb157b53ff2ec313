"""The PGR model on real crops with real weights: shapes, Eqs. 1 and 3, extractor output, missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pgr.model_files import ModelFileMissing
from reid.backbones import build_backbone
from reid.extractor import crops_to_tensor
from reid.pgr_extractor import PGRExtractor
from reid.pgr_model import (
    PGRConfig,
    PGRModel,
    cell_labels,
    instance_feature,
    part_features,
    part_visibility,
)

WEIGHTS = {
    "mobilenetv2": "mobilenetv2_imagenet_features.pt",
    "efficientnet_lite0": "efficientnet_lite0_imagenet.pth",
    "osnet_x0_25": "osnet_x0_25_msmt17.pth",
}
CHANNELS = {"mobilenetv2": 1280, "efficientnet_lite0": 1280, "resnet50": 2048, "osnet_x0_25": 128}


@pytest.fixture(scope="module")
def crops(pets_crops: list[np.ndarray]) -> list[np.ndarray]:
    """Two real crops from the PETS 2009 sample video."""
    return pets_crops[:2]


def weights_for(assets_dir: Path, backbone: str) -> Path | None:
    return (
        assets_dir / "weights" / WEIGHTS[backbone] if backbone in WEIGHTS else None
    )  # resnet50: random init


@pytest.mark.parametrize("backbone", sorted(CHANNELS))
def test_forward_shapes(backbone: str, assets_dir: Path, crops):
    torch.manual_seed(0)
    model = PGRModel(PGRConfig(backbone=backbone), weights_for(assets_dir, backbone)).eval()
    with torch.inference_mode():
        out = model(crops_to_tensor(crops, (256, 128), torch.device("cpu")))
    d = CHANNELS[backbone]
    assert out.features.shape == (2, d, 16, 8) and model.dim == d
    assert out.logits.shape == out.probs.shape == (2, 6, 16, 8)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(2, 16, 8))
    torch.testing.assert_close(out.mask, 1 - out.probs[:, 0])
    assert out.instance.shape == (2, d) and out.parts.shape == (2, 5, d)
    assert out.visibility.shape == (2, 5) and out.visibility.dtype == torch.bool
    assert torch.equal(out.foreground, out.labels != 0) and out.foreground.shape == (2, 16, 8)
    assert torch.isfinite(out.instance).all() and torch.isfinite(out.parts).all()


def test_pooling_matches_equations_1_and_3():
    x, probs = torch.randn(2, 4, 3, 2).double(), torch.randn(2, 4, 3, 2).double().softmax(1)
    mask = probs[:, 1:].sum(1)
    labels = torch.tensor([[[0, 1], [1, 3], [0, 0]], [[0, 0], [0, 0], [0, 0]]])
    for n in range(2):
        ins, parts = torch.zeros(4).double(), torch.zeros(3, 4).double()
        for i in range(3):
            for j in range(2):
                ins += mask[n, i, j] * x[n, :, i, j]
                for k in range(1, 4):
                    parts[k - 1] += probs[n, k, i, j] * x[n, :, i, j]
        torch.testing.assert_close(instance_feature(x, mask)[n], ins / mask[n].sum())
        torch.testing.assert_close(part_features(x, probs)[n], parts / probs[n, 1:].sum((1, 2))[:, None])
    assert part_visibility(labels, 3).tolist() == [[True, False, True], [False, False, False]]


def test_cell_labels_foreground_is_mask_over_half():
    # P over (background, part 1, part 2, part 3) for four cells of one image
    probs = torch.tensor(
        [
            [0.40, 0.20, 0.20, 0.20],  # bg beats each part, not their sum: part 1 (tie)
            [0.60, 0.30, 0.05, 0.05],  # M = 0.4: background
            [0.10, 0.10, 0.70, 0.10],  # part 2
            [0.55, 0.10, 0.05, 0.30],  # M = 0.45: background
        ]
    ).T.reshape(1, 4, 2, 2)
    assert cell_labels(probs).tolist() == [[[1, 0], [2, 0]]]


def test_reduce_dim_and_checkpoint_round_trip(assets_dir: Path, crops, tmp_path: Path):
    model = PGRModel(PGRConfig("mobilenetv2", reduce_dim=64), weights_for(assets_dir, "mobilenetv2")).eval()
    model.save(tmp_path / "pgr.pt")
    ex = PGRExtractor("mobilenetv2", checkpoint=tmp_path / "pgr.pt", device="cpu")
    assert ex.name == "pgr-mobilenetv2-pgr"
    with torch.inference_mode():
        out = model(crops_to_tensor(crops, (256, 128), torch.device("cpu")))
    assert out.features.shape == (2, 64, 16, 8)
    f = ex.extract(crops)[0]
    np.testing.assert_allclose(
        f.instance, torch.nn.functional.normalize(out.instance, dim=1)[0].numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="resnet50"):
        PGRExtractor("resnet50", checkpoint=tmp_path / "pgr.pt", device="cpu")


def test_float16_export_loads_and_stays_close(assets_dir: Path, crops, tmp_path: Path):
    from training.export import export

    model = PGRModel(PGRConfig("mobilenetv2"), weights_for(assets_dir, "mobilenetv2")).eval()
    model.save(tmp_path / "full.pt")
    export(tmp_path / "full.pt", tmp_path / "half.pt", note="test")
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    full = PGRExtractor("mobilenetv2", checkpoint=tmp_path / "full.pt", device="cpu").extract(crops)
    half = PGRExtractor("mobilenetv2", checkpoint=tmp_path / "half.pt", device="cpu").extract(crops)
    for a, b in zip(full, half, strict=True):
        assert float(a.instance @ b.instance) > 0.999  # unit vectors: cosine of the two extractions


def test_extractor_output(assets_dir: Path, crops):
    ex = PGRExtractor(
        "efficientnet_lite0", weights_for(assets_dir, "efficientnet_lite0"), device="cpu", pixel_dim=64
    )
    assert ex.name == "pgr-efficientnet_lite0-untrained-px64s0"
    feats = ex.extract(crops)
    assert len(feats) == 2 and ex.extract([]) == []
    with torch.inference_mode():
        out = ex.model(crops_to_tensor(crops, (256, 128), torch.device("cpu")))
    for f, mask, x in zip(feats, out.foreground, out.features, strict=True):
        assert f.instance.shape == (1280,) and f.instance.dtype == np.float32
        assert np.linalg.norm(f.instance) == pytest.approx(1.0, abs=1e-5)
        assert f.parts.shape == (5, 1280) and f.parts.dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(f.parts.astype(np.float32), axis=1), 1.0, atol=1e-2)
        assert f.part_visibility.shape == (5,) and f.part_visibility.dtype == bool
        n = int(mask.sum())
        assert f.pixels.shape == (n, 64) and f.pixels.dtype == np.float16
        assert f.pixel_coords.shape == (n, 2) and f.pixel_coords.dtype == np.int16
        assert mask[f.pixel_coords[:, 0], f.pixel_coords[:, 1]].all()
        r, c = f.pixel_coords[-1]
        want = torch.nn.functional.normalize(x[:, r, c] @ ex.projection, dim=0).numpy()
        np.testing.assert_allclose(f.pixels[-1].astype(np.float32), want, atol=2e-3)


@pytest.mark.parametrize("backbone", sorted(CHANNELS))
def test_missing_weight_file_names_the_path(backbone: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PGR_MODEL_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / f"no_{backbone}.pt"
    with pytest.raises(ModelFileMissing, match=str(missing)):
        build_backbone(backbone, missing)
    with pytest.raises(ModelFileMissing, match="pgr.pt"):
        PGRModel.load(tmp_path / "pgr.pt")


def test_resnet50_loads_a_named_torchvision_checkpoint(tmp_path: Path):
    net, _ = build_backbone("resnet50", None)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 2048)
    torch.save(state, tmp_path / "r50.pth")
    loaded, _ = build_backbone("resnet50", tmp_path / "r50.pth")
    torch.testing.assert_close(loaded.layer4[2].conv3.weight, net.layer4[2].conv3.weight)
