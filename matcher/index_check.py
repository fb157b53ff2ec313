"""Checks that an index has not lost rows, run before anything reads or writes it.

milvus-lite keeps a collection's list of data files in `manifest.json`. When that file is unreadable it
falls back to `manifest.json.prev` (one write older) and deletes the data files it no longer lists: rows
vanish, search answers "no results" and new writes go ahead. So, before milvus-lite opens a file, its
manifests must be readable and list only files that exist; after opening, the index must hold about as many
rows as there are thumbnails (every indexed detection has one; a crash between the thumbnail and the index
write leaves at most a batch more).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pgr.errors import IndexUnavailable

if TYPE_CHECKING:
    from matcher.open_index import AnyIndex

MANIFEST, PREVIOUS = "manifest.json", "manifest.json.prev"


def check_lite_manifests(db: Path) -> None:
    """Raise IndexUnavailable when a collection of a milvus-lite folder has a missing or unreadable manifest,
    or one that lists data files that are not there, before milvus-lite would silently drop rows."""
    for collection in sorted((db / "collections").glob("*")):
        if not collection.is_dir():
            continue
        manifest, has_data = collection / MANIFEST, any(collection.rglob("*.parquet"))
        if not manifest.exists():
            if has_data or (collection / PREVIOUS).exists():
                raise IndexUnavailable(_corrupt(collection, "is missing"))
            continue
        try:
            payload = json.loads(manifest.read_text(encoding="utf-8"))
            listed = [f for part in payload["partitions"].values() for f in part.get("data_files", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexUnavailable(_corrupt(collection, f"is unreadable ({exc})")) from None
        missing = [f for f in listed if not _data_file(collection, payload, f).exists()]
        if missing:
            raise IndexUnavailable(_corrupt(collection, f"lists {len(missing)} data files that are gone"))


def check_rows_against_files(index: AnyIndex, thumbnails: Path, slack: int) -> None:
    """Raise IndexUnavailable when the index holds fewer rows than there are thumbnails, less `slack` (the
    files of one unfinished batch)."""
    files = sum(1 for p in Path(thumbnails).rglob("*.jpg") if not p.name.startswith("."))
    rows = index.count()
    if files > rows + slack:
        raise IndexUnavailable(
            f"the index {index.uri} (collection {index.collection}) has lost rows: {files} thumbnails but "
            f"{rows} rows in {thumbnails}. Restore the index from a backup (or re-index the footage); "
            "starting would hide those detections from every search"
        )


def _data_file(collection: Path, payload: dict, name: str) -> Path:
    for part in payload["partitions"]:
        path = collection / "partitions" / part / name
        if path.exists():
            return path
    return collection / name


def _corrupt(collection: Path, what: str) -> str:
    return (
        f"the milvus-lite manifest of collection {collection.name} in {collection.parent.parent} {what}: "
        "opening it would drop rows. Restore the .db folder from a backup (or manifest.json from "
        "manifest.json.prev if that is all that broke); nothing was changed"
    )
