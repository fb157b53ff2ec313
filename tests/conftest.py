"""Shared fixtures: the assets folder, a real Kafka-protocol broker, configs written per test."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from pgr.app.local_stack import (  # noqa: F401 (tests import free_port, wait_for_port from here)
    MilvusLiteServer,
    free_port,
    start_noida,
    stop_noida,
    wait_for_port,
)
from pgr.paths import REPO
from pgr.paths import assets_dir as _assets_dir

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / "var" / "ultralytics"))


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """../shared/assets beside the checkout, or $PGR_ASSETS."""
    path = _assets_dir()
    if not (path / "weights").is_dir():
        pytest.fail(f"assets not found at {path}: set PGR_ASSETS to the shared assets folder")
    return path


@pytest.fixture(scope="session")
def pets_video(assets_dir: Path) -> Path:
    return assets_dir / "video" / "pets2009_vtest.mp4"


@pytest.fixture(scope="session")
def pets_crops(pets_video: Path) -> list:
    """Three real person crops (BGR) from the first frame of the PETS 2009 sample video."""
    import cv2

    cap = cv2.VideoCapture(str(pets_video))
    ok, frame = cap.read()
    cap.release()
    assert ok, f"cannot read {pets_video}"
    return [frame[40:240, 100:200].copy(), frame[100:260, 250:330].copy(), frame[150:330, 400:480].copy()]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """A real Kafka-protocol broker: $PGR_KAFKA_BOOTSTRAP if set, else a noida-db broker started here."""
    if os.environ.get("PGR_KAFKA_BOOTSTRAP"):
        yield os.environ["PGR_KAFKA_BOOTSTRAP"]
        return
    port = free_port()
    try:
        proc = start_noida(port, tmp_path_factory.mktemp("kafka"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_noida(proc)


@pytest.fixture
def milvus_server(tmp_path: Path):
    """A milvus-lite server on loopback over this test's folder: an index several processes share by URI."""
    server = MilvusLiteServer(tmp_path / "milvus").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def write_config(tmp_path: Path, assets_dir: Path):
    """Write a pipeline config for this test; keys given override the defaults (nested dicts merge)."""

    def write(**overrides) -> Path:
        cfg = {
            "transport": {"kind": "inprocess"},
            "topics": {f: f"t{uuid.uuid4().hex[:8]}.{f}" for f in ("crops", "features", "dead_letter")},
            "cameras": [],
            "ingest": {
                "detector_weights": str(assets_dir / "weights" / "yolo11n_int8_openvino_model"),
                "retry": {"initial_s": 0.1, "max_s": 0.5, "max_attempts": 3},
            },
            "reid": {
                "weights": str(assets_dir / "weights" / "mobilenetv2_imagenet_features.pt"),
                "device": "cpu",
            },
            "matcher": {"milvus_uri": str(tmp_path / "index.db"), "thumbnails_dir": str(tmp_path / "thumbs")},
            "metrics": {"port": 0},
        }
        for key, value in overrides.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


def write_clip(source: Path, out: Path, frames: int, every: int = 1) -> Path:
    """The first `frames` frames of a real video (every `every`-th) as an .mp4, or as JPEG stills when `out`
    has no suffix (a folder)."""
    import cv2

    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = None
    if out.suffix:
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    else:
        out.mkdir(parents=True)
    for i in range(frames * every):
        ok, image = cap.read()
        assert ok, f"{source} has fewer than {frames * every} frames"
        if i % every:
            continue
        if writer is not None:
            writer.write(image)
        else:
            cv2.imwrite(str(out / f"still_{i:04d}.jpg"), image)
    cap.release()
    if writer is not None:
        writer.release()
    return out


@pytest.fixture(scope="session")
def pets_clip(tmp_path_factory, pets_video) -> Path:
    """Six seconds of PETS 2009 (60 frames at 10 fps): 12 sampled frames at 2 fps, a few people."""
    return write_clip(pets_video, tmp_path_factory.mktemp("clip") / "pets_clip.mp4", 60)


def operator_config(folder: Path, **serve) -> Path:
    """A config over the shipped embedded one (its default model) with its index and files under `folder`."""
    cfg = {
        "base": str(REPO / "configs" / "embedded.yaml"),
        "cameras": [],
        "matcher": {
            "milvus_uri": str(folder / "pgr.db"),
            "thumbnails_dir": str(folder / "thumbnails"),
            "features_dir": str(folder / "features"),
        },
        "metrics": {"port": 0},
        "serve": serve,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class SmallDisk:
    """A folder on a file system of its own that a test can fill: a 4 MiB tmpfs (mounting needs root), or,
    where mounting is refused, a plain folder where every fsync after `fill` fails with ENOSPC once a few
    more have passed (the disk full at the file layer)."""

    def __init__(self, path: Path, mounted: bool, monkeypatch) -> None:
        self.path, self.mounted, self._monkeypatch = path, mounted, monkeypatch

    def fill(self, keep_free: int) -> None:
        """Leave about `keep_free` bytes of room."""
        if self.mounted:
            st = os.statvfs(self.path)
            with (self.path / "filler").open("wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - keep_free))
            return
        real, budget = os.fsync, [max(1, keep_free // 2048)]

        def fsync(fd: int) -> None:
            budget[0] -= 1
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            real(fd)

        self._monkeypatch.setattr(os, "fsync", fsync)

    def free(self) -> None:
        """Room again."""
        if self.mounted:
            (self.path / "filler").unlink()
        else:
            self._monkeypatch.undo()


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    path = tmp_path / "small_disk"
    path.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield SmallDisk(path, mounted, monkeypatch)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
