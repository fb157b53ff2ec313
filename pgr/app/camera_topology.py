"""A camera network's topology learned from a replay's TRAINING split (its true identities): which cameras see
the same person at the same moment (overlapping views), and which cameras lead to which and how soon (the
camera-transition map of `matcher.identities`). The test split is never looked at.

    python -m pgr.app.identity_eval topology --dataset dukemtmc --out configs/identities_dukemtmc.yaml

For each true identity, its local tracks in time order: two consecutive tracks on different cameras that
overlap in time make the pair overlapping; every consecutive pair A then B is a transition A>B whose
least seconds is the smallest gap seen (negative when they overlap) less `margin_s`. A pair never seen in
training cannot be linked.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Protocol

import yaml


class _Crop(Protocol):
    pid: int
    camera: str
    track: int
    time: float


def learn_topology(crops: list[_Crop], margin_s: float = 10.0, min_count: int = 1) -> dict:
    """`overlapping` groups and `transitions` (least seconds per 'A>B') from the true identities."""
    spans: dict[tuple[str, int], list] = {}
    for c in crops:
        s = spans.setdefault((c.camera, c.track), [c.pid, c.camera, c.time, c.time])
        s[2], s[3] = min(s[2], c.time), max(s[3], c.time)
    by_person: dict[int, list[list]] = defaultdict(list)
    for s in spans.values():
        by_person[s[0]].append(s)
    gaps: dict[str, list[float]] = defaultdict(list)
    overlapping: set[tuple[str, str]] = set()
    for tracks in by_person.values():
        tracks.sort(key=lambda s: s[2])
        for a, b in zip(tracks, tracks[1:], strict=False):
            gap = b[2] - a[3]
            if a[1] != b[1]:
                gaps[f"{a[1]}>{b[1]}"].append(gap)
                if gap < 0:
                    overlapping.add(tuple(sorted((a[1], b[1]))))
    transitions = {
        pair: round(min(g) - margin_s, 1) for pair, g in sorted(gaps.items()) if len(g) >= min_count
    }
    return {"overlapping": [list(p) for p in sorted(overlapping)], "transitions": transitions}


def write_topology(path: Path, topology: dict, dataset: str, base: str = "embedded.yaml") -> None:
    """A config over `base` whose matcher.identities holds the topology."""
    head = (
        f"# Camera topology of {dataset}, learned from its TRAINING split's true identities\n"
        f"# (python -m pgr.app.identity_eval topology --dataset {dataset}; pgr/app/camera_topology.py).\n"
        "# overlapping: cameras that saw one person at the same moment; transitions: least seconds from\n"
        "# leaving A to entering B (negative: the views overlap); a pair not listed cannot be linked.\n"
    )
    body = {"base": base, "matcher": {"identities": topology}}
    path.write_text(head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=110))
