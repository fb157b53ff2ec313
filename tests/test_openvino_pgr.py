"""PGR on a frozen OpenVINO re-ID network: the shipped 0277 IR gives its map and its own embedding in one
inference; heads on the map save, load and refuse a backbone they were not trained on; the extractor
gives instance, parts and pixels for real crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pgr.model_files import ModelFileMissing
from pgr.settings import DEFAULT_OPENVINO_REID
from reid.map_heads import MapHeads, MapHeadsConfig
from reid.openvino_backbone import OpenVinoBackbone, int8_ir, native_bf16
from reid.openvino_pgr_extractor import OpenVinoPGRExtractor
from training.evaluate_peer import OpenVinoReid


@pytest.fixture(scope="module")
def crops(pets_crops: list[np.ndarray]) -> list[np.ndarray]:
    return pets_crops


def test_the_ir_ships_with_its_licence():
    folder = DEFAULT_OPENVINO_REID.parent
    assert DEFAULT_OPENVINO_REID.is_file() and DEFAULT_OPENVINO_REID.with_suffix(".bin").is_file()
    assert "Apache License" in (folder / "LICENSE").read_text()


def test_one_inference_gives_map_and_the_networks_own_embedding(crops):
    import openvino as ov

    # the precision OpenVINO compiles the plain IR in when not told (the reference below)
    net = OpenVinoBackbone(DEFAULT_OPENVINO_REID, precision="bf16" if native_bf16(ov.Core()) else "f32")
    maps, emb = net.run(crops)
    assert maps.shape == (3, 512, 16, 8) and emb.shape == (3, 256)
    assert (maps >= 0).all()  # taken after a ReLU
    reference = OpenVinoReid(DEFAULT_OPENVINO_REID).embed(crops)  # the IR as shipped, one output
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True) * reference).sum(1)
    assert cos.min() > 0.9995, cos  # the extra output changes how OpenVINO fuses the graph, slightly
    empty_maps, empty_emb = net.run([])
    assert empty_maps.shape == (0, 512, 16, 8) and empty_emb.shape == (0, 256)


def test_precisions_agree_and_an_unknown_one_is_refused(crops, tmp_path: Path):
    import openvino as ov

    exact = OpenVinoBackbone(DEFAULT_OPENVINO_REID, precision="f32")
    auto = OpenVinoBackbone(DEFAULT_OPENVINO_REID)  # bf16 where the CPU has it natively, else int8
    int8 = OpenVinoBackbone(DEFAULT_OPENVINO_REID, precision="int8")
    native = native_bf16(ov.Core())
    assert exact.precision == "f32" and auto.precision == ("bf16" if native else "int8")
    assert int8.precision == "int8" and int8.name == exact.name  # the same network, quantized
    a, b, q = exact.run(crops)[1], auto.run(crops)[1], int8.run(crops)[1]

    def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)

    # int8 against f32: 0.90-0.93 on these crops (loose boxes, much background), 0.95-0.99 on Market-1501's
    # (RESULTS.md has what it costs in R1 / mAP)
    assert cosine(a, b).min() > (0.995 if native else 0.85), cosine(a, b)
    assert cosine(a, q).min() > 0.85, cosine(a, q)
    with pytest.raises(ValueError, match="fp8"):
        OpenVinoBackbone(DEFAULT_OPENVINO_REID, precision="fp8")
    if not native:
        with pytest.raises(ValueError, match="no native bf16"):
            OpenVinoBackbone(DEFAULT_OPENVINO_REID, precision="bf16")
    lone = tmp_path / "copy" / DEFAULT_OPENVINO_REID.name  # an IR without its int8 sibling
    lone.parent.mkdir()
    for f in (DEFAULT_OPENVINO_REID, DEFAULT_OPENVINO_REID.with_suffix(".bin")):
        (lone.parent / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="no int8 IR"):
        OpenVinoBackbone(lone, precision="int8")
    assert OpenVinoBackbone(lone).precision == ("bf16" if native else "f32")


def test_the_int8_ir_ships_with_its_licence_and_how_it_was_made():
    xml = int8_ir(DEFAULT_OPENVINO_REID)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert "Apache License" in (xml.parent / "LICENSE").read_text()
    assert "training split" in (xml.parent / "quantization.json").read_text()


def test_missing_and_corrupt_irs_are_named(tmp_path: Path):
    with pytest.raises(ModelFileMissing, match="nowhere.xml"):
        OpenVinoBackbone(tmp_path / "nowhere.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<net>not an IR")
    bad.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="bad.xml"):
        OpenVinoBackbone(bad)
    lone = tmp_path / "lone.xml"
    lone.write_text(DEFAULT_OPENVINO_REID.read_text())
    with pytest.raises(FileNotFoundError, match="lone.bin"):
        OpenVinoBackbone(lone)


def test_heads_round_trip_and_refuse_another_backbone(tmp_path: Path, crops):
    torch.manual_seed(0)
    heads = MapHeads(MapHeadsConfig(instance_mix=0.5)).eval()
    heads.save(tmp_path / "heads.pt")
    again = MapHeads.load(tmp_path / "heads.pt").eval()
    assert again.config == heads.config
    x, e = torch.rand(2, 512, 16, 8), torch.randn(2, 256)
    torch.testing.assert_close(again(x, e).parts_out, heads(x, e).parts_out)
    other = MapHeads(MapHeadsConfig(backbone="person-reidentification-retail-0288"))
    other.save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="0288"):
        OpenVinoPGRExtractor(tmp_path / "other.pt", DEFAULT_OPENVINO_REID)
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "heads.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pt"):
        MapHeads.load(tmp_path / "truncated.pt")
    with pytest.raises(ModelFileMissing, match="absent.pt"):
        MapHeads.load(tmp_path / "absent.pt")


def test_artifact_cells_are_zeroed_before_the_heads():
    heads = MapHeads(MapHeadsConfig()).eval()
    x = torch.rand(1, 512, 16, 8)
    spiked = x.clone()
    spiked[:, :, 0, 0] = 1000  # 0277's top corners carry huge norms in every crop
    with torch.inference_mode():
        torch.testing.assert_close(
            heads(spiked, torch.ones(1, 256)).parts, heads(x, torch.ones(1, 256)).parts
        )


def test_extractor_gives_every_granularity(tmp_path: Path, crops):
    torch.manual_seed(0)
    MapHeads(MapHeadsConfig()).save(tmp_path / "heads.pt")
    ex = OpenVinoPGRExtractor(tmp_path / "heads.pt", DEFAULT_OPENVINO_REID, pixel_dim=64)
    feats = ex.extract(crops)
    assert len(feats) == 3
    for f in feats:
        assert f.instance.shape == (256,) and abs(np.linalg.norm(f.instance) - 1) < 1e-4
        assert f.parts.shape == (5, 256) and f.part_visibility.shape == (5,)
        assert f.pixels.shape[1] == 64 and len(f.pixels) == len(f.pixel_coords)
    assert ex.extract([]) == []


def test_a_shared_extractor_leaves_the_other_stages_a_core():
    from pgr.app.pipeline import build_extractor, extractor_threads
    from pgr.settings import ReidSettings

    assert extractor_threads(0, shared=False, cores=2) == 0  # alone: every core (latency hint)
    assert extractor_threads(0, shared=True, cores=2) == 1
    assert extractor_threads(0, shared=True, cores=16) == 15
    assert extractor_threads(0, shared=True, cores=1) == 1
    assert extractor_threads(3, shared=True, cores=16) == 3  # a configured count wins
    cfg = ReidSettings(model="pgr-openvino")
    shared = build_extractor(cfg, shared=True).backbone.compiled
    assert shared.get_property("INFERENCE_NUM_THREADS") == extractor_threads(0, shared=True)
