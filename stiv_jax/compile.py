r"""Ahead-of-time fit check: compiles the train step for a TPU slice (or fake CPU devices) on this host.

  python -m stiv_jax.compile --config=experiments/t2v_512.py:size=M --topology=v5p-256
  python -m stiv_jax.compile --config=experiments/t2v_512.py:size=M,tpu=v5e --topology=v5e-256 --num_slices=4
  python -m stiv_jax.compile --config=experiments/t2v_256.py:runlocal --topology=cpu-8      # CI, no libtpu

For every bucket shape of the config (``config.data.buckets``, or the one ``data.frames x data.resolution``
bucket) it lowers the real train step (``stiv_jax.training.step``) on abstract, sharded state and batch, compiles
it against the slice's devices, and prints per-chip memory (``memory_analysis``), FLOPs (``cost_analysis``) and a
fits / does-not-fit verdict against the chip's HBM. TPU topologies are compile-only devices from libtpu
(``jax.experimental.topologies``; install ``jax[tpu]``); ``cpu-N`` uses N fake host devices and needs
``--hbm_gib`` for a verdict. The exit status is 1 when any bucket does not fit. Nothing is allocated: a model of
any size compiles here, within the host RAM the compiler itself needs (minutes for the M model).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import time

# libtpu on a host without TPUs: skip the cloud metadata queries and keep jax on the CPU backend.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip is locked, other runs may coexist

GiB = 1024 ** 3

# Published HBM per chip (GiB) and how a slice name maps onto libtpu's topology names.
CHIPS = {
    "v4": dict(hbm_gib=32, cores_per_chip=2, chip_config="megacore", dims=3),
    "v5p": dict(hbm_gib=95, cores_per_chip=2, chip_config="default", dims=3),
    "v5e": dict(hbm_gib=16, cores_per_chip=1, chip_config="default", dims=2),
    "v6e": dict(hbm_gib=32, cores_per_chip=1, chip_config="default", dims=2),
}
# Physical chip grids of the standard slice sizes (chips -> grid).
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: ``v5p-256`` (cores, like Cloud TPU names for v4/v5p), ``v5e-256`` (chips), or ``cpu-8``."""

    name: str
    kind: str                 # "v4" | "v5p" | "v5e" | "v6e" | "cpu"
    chips: int                # per slice
    hbm_bytes: int | None     # per chip (None for cpu unless --hbm_gib)
    topology_name: str = ""   # libtpu's name, e.g. "v5p:4x8x8"
    chip_config: str = "default"


ALIASES = {"v5litepod": "v5e"}   # Cloud TPU's accelerator-type names of the same chips


def valid_topologies() -> str:
    """Every accepted ``--topology`` form with its sizes, for error messages."""
    forms = []
    for kind, chip in CHIPS.items():
        grids = GRIDS_3D if chip["dims"] == 3 else GRIDS_2D
        unit = "TensorCores" if chip["cores_per_chip"] > 1 else "chips"
        forms.append(f"{kind}-N ({unit}: {', '.join(str(c * chip['cores_per_chip']) for c in sorted(grids))})")
    return "; ".join(forms + ["v5litepod-N = v5e-N", "cpu-N (N fake host devices)"])


def parse_topology(name: str, hbm_gib: float | None = None) -> Topology:
    """Parses a slice name; the error lists the accepted forms and sizes."""
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e|cpu)-(\d+)", name.strip())
    if not match:
        raise ValueError(f"--topology={name!r} is not a known slice name; valid: {valid_topologies()}")
    kind, n = ALIASES.get(match.group(1), match.group(1)), int(match.group(2))
    override = None if hbm_gib is None else int(hbm_gib * GiB)
    if kind == "cpu":
        return Topology(name, "cpu", n, override)
    chip = CHIPS[kind]
    chips = n // chip["cores_per_chip"]
    grids = GRIDS_3D if chip["dims"] == 3 else GRIDS_2D
    if n % chip["cores_per_chip"] or chips not in grids:
        sizes = sorted(c * chip["cores_per_chip"] for c in grids)
        raise ValueError(f"--topology={name!r}: {kind} slices come in sizes {sizes}")
    grid = "x".join(map(str, grids[chips]))
    return Topology(name, kind, chips, override or chip["hbm_gib"] * GiB, f"{kind}:{grid}", chip["chip_config"])


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
    """The slice's devices: compile-only TPU devices from libtpu, or the first N host CPU devices."""
    import jax
    if topology.kind == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topology.chips * num_slices:
            raise RuntimeError(f"--topology={topology.name}: this process has {len(devices)} CPU devices; run it as "
                               f"`python -m stiv_jax.compile` (it sets XLA_FLAGS) or set "
                               f"XLA_FLAGS=--xla_force_host_platform_device_count={topology.chips * num_slices}")
        return devices[:topology.chips * num_slices]
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(f"--topology={topology.name} needs libtpu to compile for TPU on this host: "
                           f"pip install 'jax[tpu]==0.10.2' (or pip install -e '.[tpu]'); "
                           f"--topology=cpu-N works without it")
    from jax.experimental import topologies
    per_host = (1, 1, 1) if topology.chips < 4 else (2, 2, 1)
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.topology_name,
                                        chip_config_name=topology.chip_config, chips_per_host_bounds=per_host,
                                        num_slices=num_slices)
    return list(desc.devices)


@dataclasses.dataclass
class FitResult:
    """Per-chip figures of one compiled bucket."""

    bucket: str
    batch_per_chip: float
    compile_seconds: float
    argument_bytes: int = 0      # state + batch shards resident at entry
    output_bytes: int = 0
    alias_bytes: int = 0         # outputs that reuse donated inputs
    temp_bytes: int = 0          # activations and scratch
    code_bytes: int = 0
    host_bytes: int = 0          # pinned host memory (remat offload): host temporaries + arguments + outputs
    flops: float = 0.0           # XLA's cost_analysis (a loop body counted once)
    model_flops: float = 0.0     # analytic per-chip FLOPs of the step (stiv_jax.training.flops, no remat)
    error: str = ""              # compile failure (e.g. CompileTimeHbmOom)
    hlo_text: str = dataclasses.field(default="", repr=False)  # optimized per-chip HLO (for the roofline)

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    def fits(self, hbm_bytes: int | None) -> bool | None:
        if self.error:
            return False
        return None if hbm_bytes is None else self.peak_bytes <= hbm_bytes


def compile_bucket(config, devices, bucket) -> FitResult:
    """Lowers and compiles the train step for ``bucket`` on a mesh over ``devices``."""
    import flax.linen as nn
    import jax
    from stiv_jax.checkpointing.manager import abstract_with_shardings
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training import compiled as compiled_lib
    from stiv_jax.training import finetune
    from stiv_jax.training import state as state_lib
    from stiv_jax.training.optimizer import build_optimizer

    mesh = mesh_lib.build_mesh(config.mesh, devices)
    rules = mesh_lib.logical_rules(config.mesh)
    with config.unlocked():
        config.data.frames, config.data.resolution = bucket.frames, bucket.height
    bundle = build_model_bundle(config, abstract=True)   # frozen encoders: their shapes, no weight files read
    tx = build_optimizer(config.optim)
    start = time.perf_counter()
    result = FitResult(bucket.name + f" batch {bucket.batch_size}", bucket.batch_size / len(devices), 0.0)
    abstract, shardings = state_lib.state_shardings(lambda: bundle.init_boxed_params(jax.random.key(0)), tx,
                                                    mesh, rules, trainable=finetune.trainable_patterns(config))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=mesh_lib.batch_sharding(mesh, rules, v.ndim))
             for k, v in compiled_lib.batch_specs(config, bucket, latent_shape=bundle.latent_shape).items()}
    frozen_boxed = bundle.frozen_boxed_params(batch)   # frozen encoders: step arguments, sharded by their names
    frozen = abstract_with_shardings(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                  nn.unbox(frozen_boxed)),
                                     state_lib.frozen_shardings(frozen_boxed, mesh, rules))
    try:
        compiled, _ = compiled_lib.compile_train_step(config, bundle, tx, state=abstract_with_shardings(
            abstract, shardings), batch=batch, frozen=frozen, shardings=shardings, mesh=mesh, rules=rules)
    except Exception as e:  # noqa: BLE001 - any compile failure is a verdict, reported with its message
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
            raise
        result.error = text.splitlines()[0][:300]
        result.compile_seconds = time.perf_counter() - start
        return result
    result.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    if memory is not None:
        result.argument_bytes = int(memory.argument_size_in_bytes)
        result.output_bytes = int(memory.output_size_in_bytes)
        result.alias_bytes = int(memory.alias_size_in_bytes)
        result.temp_bytes = int(memory.temp_size_in_bytes)
        result.code_bytes = int(getattr(memory, "generated_code_size_in_bytes", 0) or 0)
        result.host_bytes = sum(int(getattr(memory, f"host_{kind}_size_in_bytes", 0) or 0)
                                for kind in ("temp", "argument", "output"))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result.flops = float((cost or {}).get("flops", 0.0))
    result.hlo_text = compiled.as_text()
    result.model_flops = compiled_lib.step_flops(config, bundle, {k: v.shape for k, v in batch.items()}) / len(devices)
    return result


def buckets_of(config) -> list:
    """The video buckets of the config (images, ``frames == 1``, use ``image_buckets`` when set)."""
    from stiv_jax.data.buckets import image_buckets, video_buckets
    if config.data.frames == 1 and config.data.image_buckets:
        return image_buckets(config.data)
    return video_buckets(config.data)


def fit_check(config, topology: Topology, *, num_slices: int = 1, hlo_dir: str = "", roofline_chip: str = "",
              log=print) -> list[FitResult]:
    """Compiles every bucket of ``config`` for ``topology`` and logs a per-chip table with verdicts, and the
    roofline step-time model of each (``roofline_chip`` names the chip for ``cpu-N``, e.g. ``h100``)."""
    devices = topology_devices(topology, num_slices)
    if num_slices > 1 and not config.mesh.dcn:
        with config.unlocked():
            config.mesh.dcn = dict(data=-1)   # slices are joined over DCN on the batch axis
    chips = len(devices)
    hbm = topology.hbm_bytes
    log(f"fit check: {config.stage} model size={config.model.size} on {topology.name}"
        f"{f' x {num_slices} slices' if num_slices > 1 else ''} ({chips} chips, "
        f"HBM {'unknown' if hbm is None else f'{hbm / GiB:.0f} GiB'} per chip), mesh ici={dict(config.mesh.ici)}")
    results = []
    for bucket in buckets_of(config):
        result = compile_bucket(config.copy_and_resolve_references(), devices, bucket)
        results.append(result)
        if hlo_dir and result.hlo_text:
            os.makedirs(hlo_dir, exist_ok=True)
            path = os.path.join(hlo_dir, f"{bucket.name}_b{bucket.batch_size}.hlo.txt")
            with open(path, "w") as f:
                f.write(result.hlo_text)
            log(f"  optimized HLO written to {path}")
        log(format_result(result, hbm))
        if result.hlo_text:
            log(roofline_line(result, topology, num_slices=num_slices, chip_name=roofline_chip))
    return results


def roofline_line(r: FitResult, topology: Topology, *, num_slices: int, chip_name: str = "") -> str:
    """The per-chip HLO cost (loops times trip counts) and the roofline step time it implies on the chip."""
    from stiv_jax.parallel import hlo_cost
    from stiv_jax.training import accelerators, roofline
    chips = topology.chips * num_slices
    cost = hlo_cost.analyze(r.hlo_text, num_devices=chips,
                            chips_per_slice=topology.chips if num_slices > 1 else None)
    line = f"  HLO cost per chip: {hlo_cost.format_cost(cost)}"
    chip = accelerators.chip_for(chip_name or topology.kind)
    if chip is None or chip.hbm_gbps is None:
        return line + f"\n  roofline: no chip figures for {chip_name or topology.kind!r} (pass --roofline_chip)"
    model = roofline.estimate(cost, chip, model_flops=r.model_flops or None, dcn_bytes=cost.dcn_wire_bytes)
    return line + "\n  " + roofline.format_roofline(model)


def format_result(r: FitResult, hbm: int | None) -> str:
    verdict = {True: "FITS", False: "DOES NOT FIT", None: "no verdict (pass --hbm_gib)"}[r.fits(hbm)]
    if r.error:
        return f"  {r.bucket}: {verdict}: {r.error} (compile {r.compile_seconds:.0f} s)"
    share = "" if hbm is None else f" = {100 * r.peak_bytes / hbm:.0f}% of {hbm / GiB:.0f} GiB"
    return (f"  {r.bucket} ({r.batch_per_chip:g}/chip): {verdict}: peak {r.peak_bytes / GiB:.2f} GiB per chip{share}"
            f" [arguments {r.argument_bytes / GiB:.2f}, temporaries {r.temp_bytes / GiB:.2f}, outputs "
            f"{r.output_bytes / GiB:.2f}, aliased {r.alias_bytes / GiB:.2f}, code {r.code_bytes / GiB:.3f}]"
            f"{f'; host memory {r.host_bytes / GiB:.2f} GiB per chip (offloaded)' if r.host_bytes else ''}; "
            f"{r.flops / 1e12:.2f} TFLOP per chip per step (cost_analysis: loop bodies once; analytic model "
            f"{r.model_flops / 1e12:.2f}); compile {r.compile_seconds:.0f} s")


def main(argv):
    del argv
    from absl import app, flags
    f = flags.FLAGS
    try:
        topology = parse_topology(f.topology, f.hbm_gib)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from stiv_jax.training import compile_cache
    compile_cache.enable(f.config)   # no workdir: ~/.cache/stiv_jax/compile_cache unless the config names one
    results = fit_check(f.config, topology, num_slices=f.num_slices, hlo_dir=f.hlo_dir,
                        roofline_chip=f.roofline_chip)
    hbm = topology.hbm_bytes
    sys.exit(0 if all(r.fits(hbm) is not False for r in results) else 1)


def _prepare_host_devices(argv: list[str]) -> None:
    """``cpu-N`` needs N host devices, which XLA reads from XLA_FLAGS once, before jax starts a backend."""
    for arg in argv:
        match = re.fullmatch(r"--topology=cpu-(\d+)", arg)
        if match:
            slices = next((int(a.split("=")[1]) for a in argv if a.startswith("--num_slices=")), 1)
            flag = f"--xla_force_host_platform_device_count={int(match.group(1)) * slices}"
            os.environ["XLA_FLAGS"] = (re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                              os.environ.get("XLA_FLAGS", "")) + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _prepare_host_devices(sys.argv)
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config (experiments/*.py[:args]).", lock_config=True)
    flags.DEFINE_string("topology", None, "Slice: v5p-256, v5e-256, v4-128, v6e-64 ... or cpu-N.")
    flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multi-slice).")
    flags.DEFINE_float("hbm_gib", None, "HBM per chip for the verdict (default: the chip's published size).")
    flags.DEFINE_string("hlo_dir", "", "Write each bucket's optimized per-chip HLO here (re-read by the roofline).")
    flags.DEFINE_string("roofline_chip", "", "Chip of the roofline model (default: the topology's; cpu-N: "
                        "e.g. h100 to model a GPU host).")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
