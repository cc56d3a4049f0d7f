r"""The one versioned home of the libtpu / XLA flags we launch with, per accelerator generation.

Every launch recipe reads its flags from here (the shell scripts run `python3 -m stiv_jax.launch.xla_flags`), so
a flag is changed in one place and the change is reviewed with a version bump. Docs never paste these strings.

  python -m stiv_jax.launch.xla_flags --accelerator=v5p-256                 # LIBTPU_INIT_ARGS value
  python -m stiv_jax.launch.xla_flags --accelerator=v5litepod-256 --num_slices=2
  python -m stiv_jax.launch.xla_flags --accelerator=gpu --format=env          # XLA_FLAGS=... line
  python -m stiv_jax.launch.xla_flags --accelerator=gpu --gpu_flags=off       # XLA's defaults (for A/B runs)

Standard library only: it runs on a workstation that has no jax installed.

Sources (each set below names its own):
  [maxtext-lib]  AI-Hypercomputer/maxtext benchmarks/xla_flags_library.py (CF_FOR_ALL_GATHER,
                 DATA_PARALLEL_OVERLAP, DENSE_VMEM_LIMIT_FLAG).
  [maxtext-v5p]  AI-Hypercomputer/maxtext MaxText/configs/v5p/128b.sh (v5p-256/512 LIBTPU_INIT_ARGS).
  [maxtext-v5e]  AI-Hypercomputer/maxtext MaxText/configs/v5e/128b.sh (v5e-256 multi-slice LIBTPU_INIT_ARGS).
  [repro-v6e]    gclouduniverse/reproducibility Training/TPU-Trillium/*/env.sh (v6e LIBTPU_INIT_ARGS).
  [jax-gpu]      JAX docs, "GPU performance tips" (latency-hiding scheduler, combine thresholds, pipelined
                 collectives, while-loop double buffering, the high-priority async stream).
  [maxtext-gpu]  AI-Hypercomputer/maxtext GPU recipes (XLA_FLAGS of the a3 H100 runs: the same set, 128 MiB
                 combine thresholds, command buffers).
"""
from __future__ import annotations

import argparse
import sys

from stiv_jax.launch.topology import parse_accelerator

# Bump when any set below changes; the launch scripts print it so a run's log records which flags it used.
FLAGS_VERSION = "2026.12.02"

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

# GPU runs take XLA_FLAGS (not LIBTPU_INIT_ARGS). Every one is parsed by XLA at start-up (an unknown flag or value
# aborts), which tests/launch checks on the CPU backend. [jax-gpu, maxtext-gpu]
_COMBINE_BYTES = 128 * 1024 * 1024   # FSDP gathers one scanned layer's weights at a time; combine up to 128 MiB
GPU_XLA_FLAGS: tuple[str, ...] = (
    # Overlap collectives with compute: schedule async collectives early, run them on a high-priority stream.
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    # Collective combiners: fewer, larger NCCL calls for the per-parameter gathers and gradient reductions.
    f"--xla_gpu_all_gather_combine_threshold_bytes={_COMBINE_BYTES}",
    f"--xla_gpu_reduce_scatter_combine_threshold_bytes={_COMBINE_BYTES}",
    f"--xla_gpu_all_reduce_combine_threshold_bytes={_COMBINE_BYTES}",
    # Scanned blocks: gather layer i+1's weights / scatter layer i-1's gradients while layer i computes.
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    # Command buffers (CUDA graphs) for fusions, cuBLAS, cuDNN and custom calls: fewer kernel launches per step.
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUDNN,CUSTOM_CALL",
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


def gpu_xla_flags(*, enabled: bool = True, base: str = "") -> str:
    """``XLA_FLAGS`` for a GPU run: ``base`` (e.g. the current XLA_FLAGS) plus ``GPU_XLA_FLAGS`` when ``enabled``;
    a flag of ours replaces the same flag in ``base``. ``enabled=False`` leaves ``base`` alone (XLA's defaults)."""
    if not enabled:
        return base.strip()
    ours = {f.split("=")[0] for f in GPU_XLA_FLAGS}
    kept = [f for f in base.split() if f.split("=")[0] not in ours]
    return " ".join(kept + list(GPU_XLA_FLAGS))


def env_assignments(accelerator: str, *, num_slices: int = 1, gpu_flags: bool = True) -> dict[str, str]:
    """Environment variables to export for ``accelerator`` (``gpu`` or a TPU type)."""
    if accelerator == "gpu":
        return {"XLA_FLAGS": gpu_xla_flags(enabled=gpu_flags)}
    return {"LIBTPU_INIT_ARGS": libtpu_init_args(accelerator, num_slices=num_slices)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", required=True, help="TPU type (v5p-256, v5litepod-256, ...) or 'gpu'")
    parser.add_argument("--num_slices", type=int, default=1, help="TPU slices joined over DCN")
    parser.add_argument("--format", choices=("value", "env"), default="value",
                        help="value: the flag string only; env: NAME=VALUE lines")
    parser.add_argument("--gpu_flags", choices=("on", "off"), default="on",
                        help="gpu: on = our XLA_FLAGS set, off = XLA's defaults (an empty value)")
    parser.add_argument("--version", action="store_true", help="print FLAGS_VERSION and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(FLAGS_VERSION)
        return 0
    try:
        env = env_assignments(args.accelerator, num_slices=args.num_slices, gpu_flags=args.gpu_flags == "on")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, value in env.items():
        print(f"{name}={value}" if args.format == "env" else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
