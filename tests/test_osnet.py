"""OSNet x0.25 written here from the paper: torchreid's MSMT17 weights load strictly and give re-ID
features (the same person in two frames closer than two people); PGR on top of it, with necks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.extractor import crops_to_tensor
from reid.osnet import OSNet, load_torchreid_state
from reid.pgr_model import PGRConfig, PGRModel


@pytest.fixture(scope="module")
def msmt17(assets_dir: Path) -> Path:
    return assets_dir / "weights" / "osnet_x0_25_msmt17.pth"


def frames(video: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out, i = [], 0
    while len(out) < len(indices):
        ok, frame = cap.read()
        assert ok, f"{video}: ended before frame {indices[len(out)]}"
        if i in indices:
            out.append(frame)
        i += 1
    cap.release()
    return out


def test_msmt17_weights_load_strictly(msmt17: Path):
    net = OSNet.x0_25()
    load_torchreid_state(net, msmt17)  # strict: any missing or unexpected key raises
    state = torch.load(msmt17, map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.conv5.conv.weight, state["conv5.conv.weight"])
    assert sum(p.numel() for p in net.parameters()) == sum(
        v.numel()
        for k, v in state.items()
        if not k.startswith("classifier.") and "running" not in k and "num_batches" not in k
    )


def test_a_state_dict_of_another_shape_is_refused(msmt17: Path, tmp_path: Path):
    state = torch.load(msmt17, map_location="cpu", weights_only=True)
    del state["conv4.0.gate.fc1.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="conv4.0.gate.fc1.bias"):
        load_torchreid_state(OSNet.x0_25(), tmp_path / "broken.pth")


def test_features_tell_people_apart(msmt17: Path, assets_dir: Path):
    """Two crops of one walker three frames apart are closer than crops of two different walkers."""
    f0, f3 = frames(assets_dir / "video" / "pets2009_vtest.mp4", [0, 3])
    net = OSNet.x0_25()
    load_torchreid_state(net, msmt17)
    net.eval()
    crops = [f0[100:260, 250:330], f3[100:260, 250:330], f0[40:240, 100:200]]
    with torch.inference_mode():
        emb = F.normalize(net.embedding(net(crops_to_tensor(crops, (256, 128), torch.device("cpu")))), dim=1)
    same, other = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > other + 0.1, (same, other)


def test_pgr_on_osnet_uses_its_embedding_and_necks(msmt17: Path, tmp_path: Path):
    model = PGRModel(PGRConfig("osnet_x0_25", backbone_embedding=True, neck=True), msmt17).eval()
    x = torch.randn(3, 3, 256, 128)
    out = model(x)
    assert out.instance.shape == (3, 512) and out.parts.shape == (3, 5, 128)
    assert out.instance_out.shape == (3, 512) and out.parts_out.shape == (3, 5, 128)
    assert not torch.equal(out.instance_out, out.instance)  # the neck ran
    model.save(tmp_path / "osnet_pgr.pt")
    again = PGRModel.load(tmp_path / "osnet_pgr.pt").eval()
    torch.testing.assert_close(again(x).instance_out, out.instance_out)
