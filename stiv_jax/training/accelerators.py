"""Published per-chip figures of the accelerators we train on: dense bf16 peak, HBM bandwidth, interconnects.

One home for these numbers (MFU, the roofline model, the GPU bench). A chip is looked up by a generation key
(``v5p``) or by the ``device.device_kind`` jax reports (``TPU v5 lite``, ``NVIDIA H100 80GB HBM3``); an unknown
kind returns None so that callers ask for ``config.peak_tflops_per_device`` / ``--peak_tflops`` instead of guessing.

Sources (per row below):
  [tpu-v4]   cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, HBM2 32 GiB at 1200 GB/s. ICI: 6 links of 50 GB/s
             (Jouppi et al., "TPU v4: An Optically Reconfigurable Supercomputer", ISCA 2023).
  [tpu-v5e]  cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 819 GB/s, bidirectional ICI 400 GB/s per chip,
             2 x 100 Gbps NIC per 8-chip host (25 Gbps = 3.125 GB/s DCN per chip).
  [tpu-v5p]  cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 2765 GB/s, bidirectional ICI 1200 GB/s per chip,
             DCN 50 Gbps (6.25 GB/s) per chip.
  [tpu-v6e]  cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 1638 GB/s, bidirectional ICI 800 GB/s per chip. No
             per-chip DCN figure is published there: v5p's 50 Gbps is ASSUMED.
  [tpu7x]    cloud.google.com/tpu/docs/tpu7x (Ironwood): 2307 TFLOP/s bf16 (peak only).
  [h100]     NVIDIA H100 datasheet: SXM 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 900 GB/s; PCIe 756, 2.0 TB/s.
  [h200]     NVIDIA H200 datasheet: 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e, NVLink 900 GB/s.
  [a100]     NVIDIA A100 datasheet: 312 TFLOP/s dense bf16, 2.039 TB/s (80 GB SXM), NVLink 600 GB/s.
  Inter-node GPU bandwidth: 8 x 400 Gbps InfiniBand per 8-GPU host (DGX H100 reference), 50 GB/s per GPU.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures (bytes per second are 1e9 GB, not GiB)."""

    name: str
    peak_tflops: float           # dense bf16 TFLOP/s
    hbm_gbps: float | None       # HBM bandwidth, GB/s
    ici_gbps: float | None       # bidirectional chip-to-chip bandwidth within a slice / NVLink domain, GB/s
    dcn_gbps: float | None       # bandwidth per chip across slices / hosts (DCN, InfiniBand), GB/s
    source: str


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275.0, 1200.0, 300.0, 6.25, "tpu-v4 (DCN assumed as v5p)"),
    "v5e": Chip("TPU v5e", 197.0, 819.0, 400.0, 3.125, "tpu-v5e"),
    "v5p": Chip("TPU v5p", 459.0, 2765.0, 1200.0, 6.25, "tpu-v5p"),
    "v6e": Chip("TPU v6e", 918.0, 1638.0, 800.0, 6.25, "tpu-v6e (DCN assumed as v5p)"),
    "tpu7x": Chip("TPU7x", 2307.0, None, None, None, "tpu7x"),
    "h100": Chip("H100 SXM", 989.0, 3350.0, 900.0, 50.0, "h100"),
    "h100-pcie": Chip("H100 PCIe", 756.0, 2000.0, 600.0, 50.0, "h100"),
    "h200": Chip("H200", 989.0, 4800.0, 900.0, 50.0, "h200"),
    "a100": Chip("A100", 312.0, 2039.0, 600.0, 25.0, "a100"),
}

# ``device.device_kind`` substrings -> chip key; the longest match wins ("TPU v5 lite" before "TPU v5").
DEVICE_KINDS = {
    "TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5p": "v5p", "TPU v5": "v5p",
    "TPU v6 lite": "v6e", "TPU v6e": "v6e", "TPU7x": "tpu7x", "H100 PCIe": "h100-pcie", "H100": "h100",
    "H200": "h200", "GH200": "h200", "A100": "a100",
}


def chip_for(name_or_kind: str) -> Chip | None:
    """The chip of a generation key (``v5p``) or a ``device_kind`` string; None when unknown (CPU, new GPUs)."""
    if name_or_kind in CHIPS:
        return CHIPS[name_or_kind]
    lowered = name_or_kind.lower()
    for kind in sorted(DEVICE_KINDS, key=len, reverse=True):
        if kind.lower() in lowered:
            return CHIPS[DEVICE_KINDS[kind]]
    return None


def peak_tflops_per_device(device_kind: str, override: float | None = None) -> float | None:
    """Dense bf16 peak TFLOP/s of a device kind; ``override`` (``config.peak_tflops_per_device``) wins when set."""
    if override:
        return float(override)
    chip = chip_for(device_kind)
    return chip.peak_tflops if chip else None


def mfu(*, flops_per_step: float, step_seconds: float, num_devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per device over the device's peak."""
    if step_seconds <= 0 or num_devices <= 0 or peak_tflops <= 0:
        raise ValueError(f"mfu needs positive step_seconds, num_devices and peak_tflops, got {step_seconds}, "
                         f"{num_devices}, {peak_tflops}")
    return flops_per_step / step_seconds / num_devices / (peak_tflops * 1e12)
