r"""Host counts of TPU slice types: how many processes a multi-host job must have.

  python -m stiv_jax.launch.topology --accelerator=v5p-256                      # -> 32
  python -m stiv_jax.launch.topology --accelerator=v5litepod-256 --num_slices=2   # -> 128

Standard library only: the launch scripts run it (`python3 -m stiv_jax.launch.topology`) on a workstation
without jax.

Source: Cloud TPU "TPU versions" pages. v4 and v5p type names count TensorCores (2 per chip), v5e and v6e type
names count chips; every multi-host VM of these generations holds 4 chips. Single-host types: v4-8, v5p-8,
v5litepod-1/4/8, v6e-1/4/8 (the 8-chip v5e/v6e hosts).
"""
from __future__ import annotations

import argparse
import sys

_CHIPS_PER_NAMED_UNIT = {"v4": 0.5, "v5p": 0.5, "v5e": 1.0, "v6e": 1.0}
_PREFIXES = (("v5litepod-", "v5e"), ("v5e-", "v5e"), ("v5p-", "v5p"), ("v6e-", "v6e"), ("v4-", "v4"))
_CHIPS_PER_HOST = 4
_MAX_SINGLE_HOST_CHIPS = {"v4": 4, "v5p": 4, "v5e": 8, "v6e": 8}


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    """``v5p-256`` -> (``v5p``, 128 chips)."""
    for prefix, generation in _PREFIXES:
        size = accelerator[len(prefix):]
        if accelerator.startswith(prefix) and size.isdigit() and int(size) > 0:
            chips = int(int(size) * _CHIPS_PER_NAMED_UNIT[generation])
            return generation, max(chips, 1)
    raise ValueError(f"unknown TPU accelerator type {accelerator!r}; expected e.g. v4-32, v5p-256, "
                     f"v5litepod-256, v6e-256")


def hosts_per_slice(accelerator: str) -> int:
    """TPU VM hosts (= JAX processes) in one slice of ``accelerator``."""
    generation, chips = parse_accelerator(accelerator)
    if chips <= _MAX_SINGLE_HOST_CHIPS[generation]:
        return 1
    if chips % _CHIPS_PER_HOST:
        raise ValueError(f"{accelerator}: {chips} chips do not fill {_CHIPS_PER_HOST}-chip hosts")
    return chips // _CHIPS_PER_HOST


def num_processes(accelerator: str, num_slices: int = 1) -> int:
    """JAX processes of a job on ``num_slices`` slices of ``accelerator`` (one process per host)."""
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    return hosts_per_slice(accelerator) * num_slices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prints the JAX process count of a TPU job.")
    parser.add_argument("--accelerator", required=True, help="TPU type, e.g. v5p-256")
    parser.add_argument("--num_slices", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        print(num_processes(args.accelerator, args.num_slices))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
