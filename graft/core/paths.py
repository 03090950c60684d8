"""Where graft keeps what it can recompute: the cache root (feature stores, scan verdicts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$GRAFT_CACHE_DIR``, else the user cache folder (``~/.cache/graft`` on Linux)."""
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("graft"))
