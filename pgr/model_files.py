"""Finding model files: an explicit path first, then the local model cache. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path


class ModelFileMissing(FileNotFoundError):
    """A model file was not found; the message names every place that was looked at."""


def model_cache_dir() -> Path:
    """The local model cache: $PGR_MODEL_CACHE, else ~/.cache/pgr/models."""
    return Path(os.environ.get("PGR_MODEL_CACHE", Path.home() / ".cache" / "pgr" / "models"))


def require_model_file(path: str | Path, what: str) -> Path:
    """Resolve a model file or folder: the path as given, else its name in the model cache.

    Raises ModelFileMissing naming both places, so an operator sees at once what to fix.
    """
    given = Path(path).expanduser()
    if given.exists():
        return given
    cached = model_cache_dir() / given.name
    if cached.exists():
        return cached
    raise ModelFileMissing(
        f"{what}: model file not found. Looked at {given.resolve()} and in the model cache at {cached}. "
        "Set the path in the config (or on the command line), or copy the file into the cache."
    )


def quiet_ultralytics() -> None:
    """Keep ultralytics offline: no settings sync, no update checks, no hub calls, no auto-installs."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.home() / ".cache" / "pgr" / "ultralytics"))
