r"""Roofline step-time model of a compiled train step, from its per-chip HLO cost and the chip's published figures.

  python -m stiv_jax.training.roofline --hlo=runs/hlo/20x512x512_b1024.hlo.txt --chip=v5p --chips=128 \
      --model_tflops=...        # a saved `stiv_jax.compile --hlo_dir` result, no recompile

Per chip and step, with the FLOPs ``F``, HBM bytes ``B`` and wire bytes ``W_ici`` / ``W_dcn`` that
``stiv_jax.parallel.hlo_cost`` counts (loop bodies times their trip counts):

- compute time ``F / peak`` (dense bf16 peak), memory time ``B / HBM bandwidth``,
- communication time ``W_ici / (ICI / 2) + W_dcn / DCN``: the published ICI figure is bidirectional, each chip
  sends and receives its wire bytes, so half of it carries the sent bytes; a collective is assumed to use every
  ICI link of the chip (optimistic for one torus axis of a 3D slice);
- overlap assumption: XLA's async collectives and the latency-hiding scheduler hide communication behind compute,
  and a fused kernel is bound by the slower of its FLOPs and its bytes, so the step takes
  ``max(compute, memory, communication)`` (``overlapped``); ``serial`` = ``max(compute, memory) + communication``
  is the bound with no overlap at all. The implied MFU is ``model FLOPs / (step time x peak)`` with the analytic
  (remat-free) model FLOPs per chip.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from stiv_jax.parallel import hlo_cost
from stiv_jax.training import accelerators


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Seconds per step of each bound and the implied MFU (per chip)."""

    chip: str
    compute_s: float
    memory_s: float
    communication_s: float
    model_flops: float              # analytic per-chip FLOPs of the step (MFU numerator)
    hlo_flops: float                # what the chip executes, recomputation included
    peak_tflops: float

    @property
    def overlapped_s(self) -> float:
        return max(self.compute_s, self.memory_s, self.communication_s)

    @property
    def serial_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.communication_s

    @property
    def bound(self) -> str:
        times = {"compute": self.compute_s, "memory": self.memory_s, "communication": self.communication_s}
        return max(times, key=times.get)

    def mfu(self, step_seconds: float | None = None) -> float:
        """Model FLOPs utilisation at ``step_seconds`` (default: the overlapped estimate)."""
        seconds = self.overlapped_s if step_seconds is None else step_seconds
        return self.model_flops / seconds / (self.peak_tflops * 1e12)


def estimate(cost: hlo_cost.HloCost, chip: accelerators.Chip, *, model_flops: float | None = None,
             dcn_bytes: float = 0.0) -> Roofline:
    """The roofline of one chip's step.

    Args:
      cost: per-chip HLO cost (``hlo_cost.analyze``).
      chip: the chip's published figures.
      model_flops: analytic per-chip FLOPs (``flops.train_step_flops / chips``); default: the HLO FLOPs.
      dcn_bytes: the part of the wire bytes that crosses slices / hosts (sent over DCN instead of ICI).
    """
    if chip.hbm_gbps is None or chip.ici_gbps is None:
        raise ValueError(f"{chip.name}: no published HBM / ICI bandwidth in stiv_jax.training.accelerators.CHIPS")
    ici_bytes = max(cost.total_wire_bytes - dcn_bytes, 0.0)
    communication = ici_bytes / (chip.ici_gbps * 1e9 / 2)
    if dcn_bytes:
        if not chip.dcn_gbps:
            raise ValueError(f"{chip.name}: no DCN bandwidth for the {dcn_bytes:.3g} cross-slice bytes")
        communication += dcn_bytes / (chip.dcn_gbps * 1e9)
    return Roofline(chip=chip.name, compute_s=cost.flops / (chip.peak_tflops * 1e12),
                    memory_s=cost.hbm_bytes / (chip.hbm_gbps * 1e9), communication_s=communication,
                    model_flops=cost.flops if model_flops is None else model_flops, hlo_flops=cost.flops,
                    peak_tflops=chip.peak_tflops)


def format_roofline(r: Roofline, *, measured_s: float | None = None) -> str:
    """One line: the three bounds, both overlap assumptions and the implied MFU (and the error vs a measurement)."""
    line = (f"roofline {r.chip}: compute {r.compute_s:.3f} s, HBM {r.memory_s:.3f} s, collectives "
            f"{r.communication_s:.3f} s -> {r.bound}-bound; step {r.overlapped_s:.3f} s overlapped "
            f"(MFU {100 * r.mfu():.1f}%), {r.serial_s:.3f} s serial (MFU {100 * r.mfu(r.serial_s):.1f}%); "
            f"executed/model FLOPs {r.hlo_flops / r.model_flops:.2f}")
    if measured_s:
        line += (f"; measured {measured_s:.3f} s (MFU {100 * r.mfu(measured_s):.1f}%), model error "
                 f"{100 * (r.overlapped_s / measured_s - 1):+.0f}%")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hlo", required=True, help="optimized per-chip HLO text (stiv_jax.compile --hlo_dir)")
    parser.add_argument("--chip", required=True, help=f"one of {sorted(accelerators.CHIPS)} or a device_kind")
    parser.add_argument("--chips", type=int, required=True, help="chips the program runs on (replica groups)")
    parser.add_argument("--model_tflops", type=float, default=0.0, help="analytic TFLOP per chip per step")
    parser.add_argument("--measured_s", type=float, default=0.0, help="a measured step time, for the error")
    args = parser.parse_args(argv)
    chip = accelerators.chip_for(args.chip)
    if chip is None:
        print(f"error: --chip={args.chip!r} is not known; valid: {sorted(accelerators.CHIPS)}", file=sys.stderr)
        return 2
    with open(args.hlo) as f:
        cost = hlo_cost.analyze(f.read(), num_devices=args.chips)
    print(hlo_cost.format_cost(cost))
    roof = estimate(cost, chip, model_flops=args.model_tflops * 1e12 or None)
    print(format_roofline(roof, measured_s=args.measured_s or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
