"""Writes one benchmark's section into BENCHMARKS.md, replacing that section if present."""
from __future__ import annotations

import os


def write_section(text: str, path: str) -> None:
    """Replaces the ``## <name>`` section that ``text`` starts with (or appends it) in the markdown at ``path``."""
    heading = text.lstrip("\n").split("\n", 1)[0]
    existing = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = existing.find(f"\n{heading}\n")
    if start >= 0:
        end = existing.find("\n## ", start + 1)
        existing = existing[:start] + (existing[end:] if end >= 0 else "\n")
    with open(path, "w") as f:
        f.write(existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
