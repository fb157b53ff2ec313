"""Static consumer-group membership by default: every Kafka consumer gets a group.instance.id.

A dynamic member that dies is dropped only when the broker notices (some never do: the CI broker kept a
SIGKILLed worker for 19 minutes and its partitions idle). A static member that restarts with the same id
takes its place at once. The id is `transport.instance_id` (PGR_INSTANCE_ID) when set, else derived from the
host name and a slot: the lowest index whose lock file (per group, under $PGR_MEMBER_LOCKS or a per-user
folder in the temporary directory) this process can hold. Two workers on one host get different slots; a
restarted worker gets the slot of the one that died, because the kernel releases a dead process's locks.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO

MAX_SLOTS = 1024
_held: dict[tuple[str, int], IO] = {}  # lock files this process holds, open for its lifetime


def static_instance_id(group: str, configured: str | None) -> str:
    """The group.instance.id of this process's consumer in `group`."""
    if configured:
        return configured
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"
    folder = _lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    safe_group = re.sub(r"[^A-Za-z0-9_.-]", "_", group)
    for slot in range(MAX_SLOTS):
        if (group, slot) in _held:
            continue
        f = (folder / f"{safe_group}.{slot}.lock").open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _held[(group, slot)] = f
        return f"{host}-{slot}"
    raise RuntimeError(f"no free member slot for group {group} under {folder}: set transport.instance_id")


def release_instance_id(group: str, instance_id: str) -> None:
    """Give a derived id's slot back (a consumer closed): the next consumer of this process takes it."""
    slot = instance_id.rpartition("-")[2]
    f = _held.pop((group, int(slot)), None) if slot.isdigit() else None
    if f is not None:
        f.close()


def _lock_dir() -> Path:
    configured = os.environ.get("PGR_MEMBER_LOCKS")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"pgr-members-{os.getuid()}"
