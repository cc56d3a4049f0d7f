"""Named model sizes: the paper's Tab. 1 (XL, XXL, M) and tiny sizes for tests and the demo.

A size fills ``depth``, ``width`` and ``num_heads`` (head_dim 64 in the paper sizes, INFERRED from
1152/18 = 1536/24 = 3072/48). Fields set explicitly in ``config.model`` override the size's values.
"""
from __future__ import annotations

SIZES: dict[str, dict[str, int]] = {
    # STIV Tab. 1. "600M", "1.5B", "8.7B" are the paper's labels (see stiv_jax.summary for the conventions).
    "XL": dict(depth=28, width=1152, num_heads=18),
    "XXL": dict(depth=38, width=1536, num_heads=24),
    "M": dict(depth=46, width=3072, num_heads=48),
    # Small sizes for tests, the demo and debugging on CPU.
    "tiny": dict(depth=2, width=64, num_heads=4),
    "small": dict(depth=4, width=128, num_heads=4),
}

# Parameter-count labels the paper gives in Tab. 1.
PAPER_LABELS: dict[str, float] = {"XL": 600e6, "XXL": 1.5e9, "M": 8.7e9}


def size_fields(name: str) -> dict[str, int]:
    """The ``depth``/``width``/``num_heads`` of size ``name``; the error lists the valid names."""
    if name not in SIZES:
        raise ValueError(f"config.model.size={name!r} is not a known size; valid sizes: {sorted(SIZES)}")
    return dict(SIZES[name])
