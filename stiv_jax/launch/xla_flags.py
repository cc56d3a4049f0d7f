r"""The one versioned home of the libtpu / XLA flags we launch with, per accelerator generation.

Every launch recipe reads its flags from here (the shell scripts run `python3 -m stiv_jax.launch.xla_flags`), so
a flag is changed in one place and the change is reviewed with a version bump. Docs never paste these strings.

  python -m stiv_jax.launch.xla_flags --accelerator=v5p-256                 # LIBTPU_INIT_ARGS value
  python -m stiv_jax.launch.xla_flags --accelerator=v5litepod-256 --num_slices=2
  python -m stiv_jax.launch.xla_flags --accelerator=gpu --format=env          # XLA_FLAGS=... line

Standard library only: it runs on a workstation that has no jax installed.

Sources (each set below names its own):
  [maxtext-lib]  AI-Hypercomputer/maxtext benchmarks/xla_flags_library.py (CF_FOR_ALL_GATHER,
                 DATA_PARALLEL_OVERLAP, DENSE_VMEM_LIMIT_FLAG).
  [maxtext-v5p]  AI-Hypercomputer/maxtext MaxText/configs/v5p/128b.sh (v5p-256/512 LIBTPU_INIT_ARGS).
  [maxtext-v5e]  AI-Hypercomputer/maxtext MaxText/configs/v5e/128b.sh (v5e-256 multi-slice LIBTPU_INIT_ARGS).
  [repro-v6e]    gclouduniverse/reproducibility Training/TPU-Trillium/*/env.sh (v6e LIBTPU_INIT_ARGS).
  [jax-gpu]      JAX docs, "GPU performance tips" (latency-hiding scheduler).
"""
from __future__ import annotations

import argparse
import sys

from stiv_jax.launch.topology import parse_accelerator

# Bump when any set below changes; the launch scripts print it so a run's log records which flags it used.
FLAGS_VERSION = "2026.11.24"

# Async collective fusion for all-gathers: lets FSDP weight gathers overlap compute. [maxtext-lib]
_ASYNC_ALL_GATHER = (
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)

# Data-parallel all-reduce optimisation: pipelines the (DCN) gradient all-reduce across steps. Used by MaxText on
# every multi-slice v5e/v5p recipe. [maxtext-lib DATA_PARALLEL_OVERLAP, maxtext-v5e, maxtext-v5p]
_DATA_PARALLEL_OVERLAP = (
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
)

# Per-generation sets for a single slice. Multi-slice adds _DATA_PARALLEL_OVERLAP (see libtpu_init_args).
TPU_FLAGS: dict[str, tuple[str, ...]] = {
    # v4: the all-gather overlap set only. [maxtext-lib]
    "v4": _ASYNC_ALL_GATHER,
    # v5e (v5litepod): MaxText's v5e-256 recipe = data-parallel overlap + async all-gather. [maxtext-v5e]
    "v5e": _DATA_PARALLEL_OVERLAP + _ASYNC_ALL_GATHER,
    # v5p: MaxText's v5p-256 recipe adds async collective-permute and backward all-gather pipelining, and keeps
    # megacore fusion from swallowing all-gathers. [maxtext-v5p]
    "v5p": _DATA_PARALLEL_OVERLAP + _ASYNC_ALL_GATHER + (
        "--xla_tpu_megacore_fusion_allow_ags=false",
        "--xla_enable_async_collective_permute=true",
        "--xla_tpu_enable_ag_backward_pipelining=true",
    ),
    # v6e (Trillium): larger scoped VMEM (96 MiB) for dense kernels + async all-gather. [repro-v6e, maxtext-lib]
    "v6e": _ASYNC_ALL_GATHER + ("--xla_tpu_scoped_vmem_limit_kib=98304",),
}

# GPU runs take XLA_FLAGS (not LIBTPU_INIT_ARGS). [jax-gpu]
GPU_XLA_FLAGS: tuple[str, ...] = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
)


def tpu_generation(accelerator: str) -> str:
    """Generation key (``v4``, ``v5e``, ``v5p``, ``v6e``) of an accelerator type such as ``v5p-256``."""
    return parse_accelerator(accelerator)[0]


def libtpu_init_args(accelerator: str, *, num_slices: int = 1) -> str:
    """The ``LIBTPU_INIT_ARGS`` value for ``accelerator`` (e.g. ``v5p-256``) over ``num_slices`` slices."""
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    flags = list(TPU_FLAGS[tpu_generation(accelerator)])
    if num_slices > 1:
        flags += [f for f in _DATA_PARALLEL_OVERLAP if f not in flags]
    return " ".join(flags)


def env_assignments(accelerator: str, *, num_slices: int = 1) -> dict[str, str]:
    """Environment variables to export for ``accelerator`` (``gpu`` or a TPU type)."""
    if accelerator == "gpu":
        return {"XLA_FLAGS": " ".join(GPU_XLA_FLAGS)}
    return {"LIBTPU_INIT_ARGS": libtpu_init_args(accelerator, num_slices=num_slices)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", required=True, help="TPU type (v5p-256, v5litepod-256, ...) or 'gpu'")
    parser.add_argument("--num_slices", type=int, default=1, help="TPU slices joined over DCN")
    parser.add_argument("--format", choices=("value", "env"), default="value",
                        help="value: the flag string only; env: NAME=VALUE lines")
    parser.add_argument("--version", action="store_true", help="print FLAGS_VERSION and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(FLAGS_VERSION)
        return 0
    try:
        env = env_assignments(args.accelerator, num_slices=args.num_slices)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, value in env.items():
        print(f"{name}={value}" if args.format == "env" else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
