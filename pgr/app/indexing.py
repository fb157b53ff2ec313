"""`pgr index`: recorded footage (video files, folders of stills) through the embedded pipeline.

Each file runs as a camera source of its own with a tag in its detection ids (`file_tag`: from its name and
size, so the same file always gives the same ids and two files of one camera never share one). What was
indexed is kept in `indexed_files.json` beside the index: a file finished earlier is skipped, a file that
was interrupted is indexed again from its start (its ids are the same, the index upserts on them: no
duplicates), and the search server re-reads a detection's frame from the path recorded there.

A folder of image files is a set of unrelated stills: detected image by image, never tracked (track -1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2

from ingest.sources import IMAGE_SUFFIXES, recorded_at
from pgr.files import write_atomically
from pgr.metrics import PipelineMetrics, counter_total
from pgr.settings import CameraSettings, Settings
from reid.extractor import FeatureExtractor

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts"}


@dataclass
class IndexedFile:
    """One file (or folder of stills) `pgr index` took: where, which camera, its clock, and whether done."""

    path: str
    camera: str
    tag: str
    start_time: float
    start_from: str  # where the start time came from: command line, config, file metadata, file time
    stills: bool
    fps: float
    done: bool = False
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    skipped: bool = False  # this run found it done before (not saved)


def file_tag(path: Path) -> str:
    """A stable tag for a file's detection ids: its name and size (a folder: its images' names)."""
    path = Path(path)
    if path.is_dir():
        what = path.name + "\n" + "\n".join(p.name for p in stills_in(path))
    else:
        what = f"{path.name}\n{path.stat().st_size}"
    return "f" + hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def stills_in(folder: Path) -> list[Path]:
    """The images of a folder of stills, in the order ingest reads them (frame index = position)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def expand_sources(paths: list[Path]) -> list[tuple[Path, bool]]:
    """(source, is_stills) for the arguments: video files as given; a folder's videos one by one and its
    images as one folder of stills."""
    out: list[tuple[Path, bool]] = []
    for p in paths:
        if p.is_dir():
            videos = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES)
            out += [(v, False) for v in videos]
            if stills_in(p):
                out.append((p, True))
            if not videos and not stills_in(p):
                raise ValueError(f"{p}: no video files or images in this folder")
        elif p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                raise ValueError(f"{p}: index a folder of stills, not one image (search takes single images)")
            out.append((p, False))
        else:
            raise ValueError(f"no such file or folder: {p}")
    return out


def start_time_of(path: Path, given: float | None, configured: float | None) -> tuple[float, str]:
    """A source's first-frame time and where it came from: the command line, the config's camera, the file's
    own metadata (MP4/MOV creation time), else the file's modification time (a folder: its first image's)."""
    if given is not None:
        return given, "command line"
    if configured is not None:
        return configured, "config"
    if path.is_file() and (t := recorded_at(path)) is not None:
        return t, "file metadata"
    first = stills_in(path)[0] if path.is_dir() else path
    return first.stat().st_mtime, "file modification time"


def load_state(path: Path) -> dict[str, IndexedFile]:
    """What earlier runs indexed, by tag (empty when nothing was)."""
    if not path.is_file():
        return {}
    return {tag: IndexedFile(**entry) for tag, entry in json.loads(path.read_text()).items()}


def save_state(path: Path, state: dict[str, IndexedFile]) -> None:
    text = json.dumps({tag: asdict(f) | {"skipped": False} for tag, f in state.items()}, indent=1)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def _sampled_frames(source: Path, stills: bool, fps: float) -> int | None:
    """How many frames the pipeline will sample from the source (for the progress bar)."""
    if stills:
        return len(stills_in(source))
    cap = cv2.VideoCapture(str(source))
    try:
        count, native = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    if not count or count <= 0:
        return None
    step = max(native / fps, 1.0) if native and native > 0 else 1.0
    return math.ceil(count / step)


def index_files(
    settings: Settings,
    paths: list[Path],
    camera: str,
    extractor: FeatureExtractor,
    start: float | None = None,
    fps: float | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[IndexedFile, int, int | None], None] | None = None,
    bars: bool = True,
) -> list[IndexedFile]:
    """Index each source into the configured index; returns what each file gave (skipped ones as before).

    `progress(file, frames_detected, frames_total)` is called about twice a second while a file runs.
    """
    from tqdm import tqdm

    from pgr.app.pipeline import run_embedded

    stop = stop or threading.Event()
    state_path = settings.indexed_files
    state = load_state(state_path)
    configured = {c.id: c for c in settings.cameras}
    cam_cfg = configured.get(camera)
    out = []
    for source, stills in expand_sources(paths):
        tag = file_tag(source)
        earlier = state.get(tag)
        if earlier is not None and earlier.done and earlier.camera == camera:
            log.info("%s: indexed before (%d detections), skipped", source, earlier.detections)
            out.append(replace(earlier, skipped=True))
            continue
        if stop.is_set():
            break
        t0, origin = start_time_of(source, start, cam_cfg.start_time if cam_cfg else None)
        rate = fps or (cam_cfg.fps if cam_cfg else 2.0)
        entry = IndexedFile(str(source.resolve()), camera, tag, t0, origin, stills, rate)
        state[tag] = entry
        save_state(state_path, state)
        cam = CameraSettings(
            id=camera, source=str(source), fps=rate, start_time=t0, track=not stills, id_tag=tag
        )
        metrics = PipelineMetrics()
        total = _sampled_frames(source, stills, rate)
        started = time.perf_counter()
        result: dict = {}
        worker = threading.Thread(
            target=lambda c=cam, m=metrics, r=result: r.update(
                run=run_embedded(settings.model_copy(update={"cameras": [c]}), m, stop, extractor)
            ),
            name=f"index-{tag}",
        )
        bar = tqdm(total=total, desc=source.name, unit="frame", disable=not bars, leave=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            read = int(counter_total(metrics.frames_detected))
            bar.update(read - bar.n)
            bar.set_postfix(indexed=int(counter_total(metrics.records_indexed)), refresh=False)
            if progress is not None:
                progress(entry, read, total)
        bar.close()
        run = result.get("run")
        if run is None or run.errors:
            raise RuntimeError(f"{source}: indexing failed: {'; '.join(run.errors) if run else 'no result'}")
        entry.frames = int(counter_total(metrics.frames_read))
        entry.detections = int(counter_total(metrics.records_indexed))
        entry.seconds = time.perf_counter() - started
        entry.done = not stop.is_set()
        save_state(state_path, state)
        out.append(entry)
        log.info(
            "%s: %d frames, %d detections in %.1fs (start %s, from the %s)%s",
            source,
            entry.frames,
            entry.detections,
            entry.seconds,
            time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
            origin,
            "" if entry.done else "; interrupted: run again to finish",
        )
    return out
