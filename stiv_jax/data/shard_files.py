"""Where clip and latent shards live on disk: resolving ``config.data.shards`` to ArrayRecord files."""
from __future__ import annotations

import glob
import os


def shard_paths(pattern: str, *, key: str = "config.data.shards") -> list[str]:
    """ArrayRecord shard files of a directory or glob, sorted; errors name the config ``key``."""
    paths = sorted(glob.glob(os.path.join(pattern, "*.array_record")) if os.path.isdir(pattern)
                   else glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"{key}={pattern!r} matches no .array_record files")
    return paths
