"""`pgr index`: recorded footage through the embedded pipeline, resumable without duplicates, with the start
time from the command line, the config or the file; a folder of stills is never tracked."""

from __future__ import annotations

import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import operator_config, write_clip

from ingest.sources import recorded_at
from matcher.open_index import open_index
from pgr.app.cli import main
from pgr.app.indexing import file_tag, index_files, load_state, start_time_of
from pgr.app.pipeline import build_extractor
from pgr.settings import load_settings


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    return build_extractor(load_settings(operator_config(tmp_path_factory.mktemp("model"))).reid)


def _rows(settings):
    index = open_index(settings.matcher)
    try:
        return index.get(index.all_ids())
    finally:
        index.close()


def test_index_command_indexes_a_video_with_its_start_time_and_skips_it_when_run_again(
    tmp_path, pets_clip, capsys
):
    cfg = operator_config(tmp_path)
    start = "2024-03-01T08:00:00+00:00"
    assert main(["index", str(pets_clip), "--camera", "gate", "--start", start, "--config", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "12 frames" in out.out and "from the command line: done" in out.out
    assert "pets_clip.mp4: 100%" in out.err  # the progress bar of the file
    settings = load_settings(cfg)
    rows = _rows(settings)
    assert len(rows) >= 10
    tag = file_tag(pets_clip)
    assert all(r.detection_id.startswith(f"gate:{tag}:") and r.camera_id == "gate" for r in rows)
    t0 = datetime.fromisoformat(start).timestamp()
    # frame i of a 10 fps file is seen at start + i / 10
    assert {r.timestamp for r in rows} <= {t0 + i / 10 for i in range(0, 60, 5)}
    assert any(r.track_id >= 0 for r in rows)

    assert main(["index", str(pets_clip), "--camera", "gate", "--config", str(cfg)]) == 0
    assert f"indexed before ({len(rows)} detections), skipped" in capsys.readouterr().out
    assert sorted(r.detection_id for r in _rows(settings)) == sorted(r.detection_id for r in rows)


def test_an_interrupted_file_is_indexed_again_without_duplicates(tmp_path, pets_clip, extractor):
    settings = load_settings(operator_config(tmp_path / "resumed"))
    stop = threading.Event()

    def interrupt(entry, frames_read, total):
        if frames_read >= 4:
            stop.set()

    first = index_files(settings, [pets_clip], "gate", extractor, start=1.7e9, stop=stop, progress=interrupt)
    assert not first[0].done and not load_state(settings.indexed_files)[first[0].tag].done
    partial = {r.detection_id for r in _rows(settings)}
    assert len(partial) > 0

    again = index_files(settings, [pets_clip], "gate", extractor, start=1.7e9, bars=False)
    assert again[0].done
    resumed = [r.detection_id for r in _rows(settings)]

    fresh = load_settings(operator_config(tmp_path / "fresh"))
    index_files(fresh, [pets_clip], "gate", extractor, start=1.7e9, bars=False)
    expected = sorted(r.detection_id for r in _rows(fresh))
    assert sorted(resumed) == expected  # same ids, none twice
    assert partial <= set(expected)


def test_a_folder_of_stills_is_not_tracked(tmp_path, pets_video, extractor):
    stills = write_clip(pets_video, tmp_path / "stills", 6, every=5)  # consecutive enough to track
    settings = load_settings(operator_config(tmp_path))
    done = index_files(settings, [stills], "desk", extractor, start=1.7e9, fps=1.0, bars=False)
    assert done[0].stills and done[0].done and done[0].frames == 6
    rows = _rows(settings)
    assert len(rows) >= 6
    assert all(r.track_id == -1 for r in rows)  # no link across stills
    assert {r.frame_index for r in rows} <= set(range(6))
    assert {r.timestamp for r in rows} <= {1.7e9 + i for i in range(6)}  # one still per 1/fps seconds


def _mp4_with_creation_time(path: Path, when: datetime) -> Path:
    secs = int(when.timestamp()) + 2082844800  # seconds since 1904
    mvhd_body = bytes([0, 0, 0, 0]) + struct.pack(">IIII", secs, secs, 1000, 0) + bytes(80)
    mvhd = struct.pack(">I4s", 8 + len(mvhd_body), b"mvhd") + mvhd_body
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    ftyp = struct.pack(">I4s", 16, b"ftyp") + b"isom" + bytes(4)
    path.write_bytes(ftyp + moov)
    return path


def test_start_time_comes_from_the_command_line_then_the_config_then_the_file(tmp_path):
    when = datetime(2021, 6, 5, 14, 30, tzinfo=UTC)
    video = _mp4_with_creation_time(tmp_path / "cam.mp4", when)
    assert recorded_at(video) == when.timestamp()
    assert start_time_of(video, 5.0, 6.0) == (5.0, "command line")
    assert start_time_of(video, None, 6.0) == (6.0, "config")
    assert start_time_of(video, None, None) == (when.timestamp(), "file metadata")
    plain = tmp_path / "plain.avi"
    plain.write_bytes(b"RIFF" + bytes(100))
    assert recorded_at(plain) is None
    t, origin = start_time_of(plain, None, None)
    assert origin == "file modification time" and abs(t - time.time()) < 60


def test_bad_arguments_get_one_line(tmp_path, capsys):
    cfg = operator_config(tmp_path)
    assert main(["index", str(tmp_path / "missing.mp4"), "--camera", "c", "--config", str(cfg)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--camera", "../x", "--config", str(cfg)]) == 2
    assert "bad camera id" in capsys.readouterr().err
