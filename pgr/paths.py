"""Where things are: the repository, the shared assets and the project's own weights, worked out once.

The shared assets (development model weights, videos) are $PGR_ASSETS, else ../shared/assets beside the
checkout; they are read when asked for, so a test or a process may set PGR_ASSETS before it asks.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# The project's own trained PGR checkpoints, package data of reid (found without importing it).
SHIPPED_WEIGHTS = REPO / "reid" / "weights"


def assets_dir() -> Path:
    """The shared assets folder: $PGR_ASSETS, else ../shared/assets beside the checkout."""
    return Path(os.environ.get("PGR_ASSETS") or REPO.parent / "shared" / "assets")


def asset_weights_dir() -> Path:
    """The shared assets' model weights."""
    return assets_dir() / "weights"


def asset_weights(name: str | Path) -> Path:
    """A weights file named in a config: kept when absolute, else under the shared assets' weights.

    $VARS in the name are expanded first.
    """
    path = Path(os.path.expandvars(str(name))).expanduser()
    return path if path.is_absolute() else asset_weights_dir() / path
