r"""Measured step time, TFLOP/s and MFU of the real train step on one accelerator, side by side.

  # GPU (H100/H200): XL at 256x256x20, MaskDiT 50%, paper remat, bf16, AdaFactor, EMA; batch 1, 2, 4 ... until OOM
  python bench/mfu.py --write
  # CPU smoke run at a tiny size (what the test suite runs)
  JAX_PLATFORMS=cpu python bench/mfu.py --size=tiny --resolution=32 --frames=4 --batches=1,2 --steps=2 --warmup=1 \
      --dtype=float32

For every (XLA flag set, attention implementation, remat policy, batch per device) it compiles the train step of
``experiments/t2v_256.py`` (``stiv_jax.training.step``, the same code as training) on one device, runs
``--warmup`` steps, then times ``--steps`` steps one by one (each waited for) and reports the median, the
analytic FLOPs (``stiv_jax.training.flops``, remat recomputation not counted) over it as TFLOP/s, the MFU against
the device's dense bf16 peak (``stiv_jax.training.accelerators``, by ``device_kind``; ``--peak_tflops`` for an
unknown kind), the peak device memory and process CPU time beside wall time. Beside every measured row it prints
the roofline model's prediction from the same compiled HLO (``stiv_jax.training.roofline``) and its error.
``--batches=auto`` doubles the batch until the step no longer fits (RESOURCE_EXHAUSTED) and reports the largest
that fits per remat policy. The XLA flag sets (``stiv_jax.launch.xla_flags --accelerator=gpu``, on and off) run in
child processes, since XLA reads XLA_FLAGS once. ``--profile`` traces two steps of the first case with
``jax.profiler`` and splits the device time into attention, FFN, norms, optimizer and collectives.

Attention implementations: ``xla`` (einsums), ``cudnn`` (``jax.nn.dot_product_attention`` with
``implementation='cudnn'``, the model's ``attention_impl='dot_product'`` on a GPU with bf16), ``splash`` (TPU).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTENTION = {"xla": "xla", "cudnn": "dot_product", "splash": "splash"}   # bench name -> config.model.attention_impl


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/t2v_256.py", help="stage config file")
    p.add_argument("--size", default="XL", help="model size (Tab. 1): XL, XXL, M, tiny")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--dtype", default="", help="compute dtype override (CPU smoke runs: float32; XLA's CPU "
                                               "compile of bf16 steps takes minutes); default: the config's bf16")
    p.add_argument("--batches", default="auto", help="batch sizes per device, e.g. 1,2,4, or auto (until OOM)")
    p.add_argument("--max_batch", type=int, default=64, help="auto: stop doubling here")
    p.add_argument("--attention", default="auto", help="comma list of xla,cudnn,splash; auto: what the backend runs")
    p.add_argument("--remat", default="self_attention,none,full", help="config.model.remat_policy values")
    p.add_argument("--xla_flags", default="on,off", help="GPU XLA flag sets to compare (on, off); CPU: ignored")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the compile")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="peak for an unknown device_kind (0: look up)")
    p.add_argument("--profile", action="store_true", help="trace the first case; print the time breakdown")
    p.add_argument("--write", action="store_true", help="replace the ## mfu section of BENCHMARKS.md")
    p.add_argument("--json", default="", help="write the rows as JSON here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)   # one flag set, rows as JSON to this path
    return p.parse_args(argv)


def stage_config(args, *, attention: str, remat: str, batch: int):
    """The stage config on one device with this case's attention, remat and batch."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_stage", os.path.join(ROOT, args.config))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The stand-in encoders: no VAE / CLIP weights on a benchmark host, and the step's model FLOPs are the DiT's.
    config = module.get_config(f"size={args.size},stand_ins")
    with config.unlocked():
        config.data.resolution, config.data.frames, config.data.batch_size = args.resolution, args.frames, batch
        config.data.buckets = ()
        config.model.attention_impl, config.model.remat_policy = ATTENTION[attention], remat
        config.mesh.ici, config.mesh.dcn, config.mesh.rules = dict(data=1, fsdp=1, context=1, tensor=1), {}, "fsdp"
        config.health.hang_timeout_s = 0.0
        if args.dtype:
            config.model.dtype = args.dtype
    return config


def is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "HbmOom" in text


def run_case(args, *, attention: str, remat: str, batch: int, profile_dir: str = "") -> dict:
    """Compiles and times one case; ``{"oom": True}`` when it does not fit."""
    import jax
    import numpy as np
    from stiv_jax.parallel import hlo_cost
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training.compiled import compile_train_step
    from stiv_jax.training import accelerators, roofline
    from stiv_jax.training import flops as flops_lib
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer

    config = stage_config(args, attention=attention, remat=remat, batch=batch)
    device = jax.devices()[0]
    mesh, rules = mesh_lib.build_mesh(config.mesh, [device]), mesh_lib.logical_rules(config.mesh)
    bundle, tx = build_model_bundle(config), build_optimizer(config.optim)
    row = dict(attention=attention, remat=remat, batch=batch, device=device.device_kind, oom=False)
    try:
        boxed_fn = lambda: bundle.init_boxed_params(jax.random.key(0))  # noqa: E731
        state, shardings = state_lib.init_state(boxed_fn, tx, mesh, rules)
        rng = np.random.default_rng(0)
        from stiv_jax.training.compiled import batch_specs
        from stiv_jax.data.buckets import video_buckets
        specs = batch_specs(config, video_buckets(config.data)[0])
        host = {k: (rng.integers(0, 255, s.shape).astype(s.dtype) if k == "video" else np.ones(s.shape, s.dtype))
                for k, s in specs.items()}
        batch_arrays = mesh_lib.host_to_global_batch(host, mesh, rules)
        frozen, _ = state_lib.place_frozen(bundle.frozen_boxed_params(batch_arrays), mesh, rules)
        start = time.perf_counter()
        compiled, _ = compile_train_step(config, bundle, tx, state=state, batch=batch_arrays, frozen=frozen,
                                         shardings=shardings, mesh=mesh, rules=rules)
        row["compile_s"] = time.perf_counter() - start
        times, cpu = [], []
        with mesh_lib.activate(mesh, rules):
            for i in range(args.warmup + args.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                state, metrics = compiled(state, batch_arrays, frozen)
                jax.block_until_ready(metrics)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            if profile_dir:
                with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
                    for _ in range(2):
                        state, metrics = compiled(state, batch_arrays, frozen)
                        jax.block_until_ready(metrics)
    except Exception as e:  # noqa: BLE001 - an out-of-memory case is a result; anything else is re-raised
        if not is_oom(e):
            raise
        row.update(oom=True, error=str(e).splitlines()[0][:200])
        return row
    step_flops = flops_lib.train_step_flops(bundle.dit.config, latent_shape=bundle.latent_shape,
                                            text_length=bundle.text_length, text_dim=config.text.dim,
                                            batch_size=batch)
    median = statistics.median(times)
    row.update(step_s=median, cpu_s=statistics.median(cpu), flops=step_flops, tflops=step_flops / median / 1e12,
               peak_memory_gib=peak_memory_gib(device, compiled))
    peak = accelerators.peak_tflops_per_device(device.device_kind, args.peak_tflops or None)
    row["peak_tflops"] = peak
    row["mfu"] = accelerators.mfu(flops_per_step=step_flops, step_seconds=median, num_devices=1,
                                  peak_tflops=peak) if peak else None
    hlo = compiled.as_text()
    chip = accelerators.chip_for(device.device_kind)
    if chip is not None and chip.hbm_gbps:
        model = roofline.estimate(hlo_cost.analyze(hlo, num_devices=1), chip, model_flops=step_flops)
        row.update(roofline_s=model.overlapped_s, roofline_bound=model.bound)
    if profile_dir:
        from stiv_jax.training import profile_breakdown as pb
        seconds = pb.breakdown(pb.trace_events(profile_dir), pb.op_categories(hlo))
        row["profile"] = {k: v / 2 for k, v in seconds.items()}          # per step
    return row


def peak_memory_gib(device, compiled) -> float:
    """Peak bytes in use on the device (GPU/TPU allocator stats), else the compiled program's footprint (CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("peak_bytes_in_use"):
        return stats["peak_bytes_in_use"] / 2**30
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) / 2**30


def attention_cases(args, backend: str) -> list[str]:
    if args.attention != "auto":
        names = [a for a in args.attention.split(",") if a]
        unknown = set(names) - set(ATTENTION)
        if unknown:
            raise SystemExit(f"--attention: unknown {sorted(unknown)}; valid: {sorted(ATTENTION)}")
        return names
    return {"gpu": ["xla", "cudnn"], "tpu": ["xla", "splash"]}.get(backend, ["xla"])


def run_flag_set(args, flag_set: str) -> list[dict]:
    """Every case under the XLA flags of this process."""
    import jax
    backend = jax.default_backend()
    rows = []
    profile_dir = os.path.join("/tmp", f"stiv_mfu_profile_{os.getpid()}") if args.profile else ""
    for attention in attention_cases(args, backend):
        for remat in [r for r in args.remat.split(",") if r]:
            batches = ([int(b) for b in args.batches.split(",")] if args.batches != "auto"
                       else [2 ** i for i in range(16) if 2 ** i <= args.max_batch])
            for batch in batches:
                row = run_case(args, attention=attention, remat=remat, batch=batch, profile_dir=profile_dir)
                profile_dir = ""
                row["xla_flags"] = flag_set
                rows.append(row)
                print(format_row(row), flush=True)
                if row["oom"]:
                    break   # larger batches do not fit either
    return rows


def format_row(r: dict) -> str:
    case = f"flags {r['xla_flags']:3s} attention {r['attention']:5s} remat {r['remat']:14s} batch {r['batch']:3d}"
    if r["oom"]:
        return f"{case}: does not fit ({r.get('error', '')})"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a (unknown peak: --peak_tflops)"
    roof = ""
    if r.get("roofline_s"):
        roof = f"; roofline {r['roofline_s'] * 1e3:.1f} ms ({r['roofline_bound']}), error {100 * (r['roofline_s'] / r['step_s'] - 1):+.0f}%"
    return (f"{case}: step {r['step_s'] * 1e3:.1f} ms (CPU {r['cpu_s'] * 1e3:.1f} ms), {r['tflops']:.2f} TFLOP/s, "
            f"MFU {mfu}, peak memory {r['peak_memory_gib']:.2f} GiB{roof}")


def table(rows: list[dict]) -> str:
    head = ("| XLA flags | attention | remat | batch/device | step (ms) | CPU (ms) | TFLOP/s | MFU | peak mem (GiB) "
            "| roofline (ms) |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if r["oom"]:
            lines.append(f"| {r['xla_flags']} | {r['attention']} | {r['remat']} | {r['batch']} | does not fit "
                         f"| | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        roof = f"{r['roofline_s'] * 1e3:.1f}" if r.get("roofline_s") else "n/a"
        lines.append(f"| {r['xla_flags']} | {r['attention']} | {r['remat']} | {r['batch']} | {r['step_s'] * 1e3:.1f} "
                     f"| {r['cpu_s'] * 1e3:.1f} | {r['tflops']:.2f} | {mfu} | {r['peak_memory_gib']:.2f} | {roof} |")
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    """Largest batch that fits per remat policy, the best MFU, and flag on/off and attention ratios."""
    out = []
    fits = [r for r in rows if not r["oom"]]
    for remat in sorted({r["remat"] for r in rows}):
        sizes = [r["batch"] for r in fits if r["remat"] == remat]
        if sizes:
            out.append(f"largest batch per device that fits with remat {remat}: {max(sizes)}")
    if fits and any(r.get("mfu") for r in fits):
        best = max(fits, key=lambda r: r.get("mfu") or 0)
        out.append(f"best MFU {100 * best['mfu']:.1f}%: {format_row(best)}")
    key = lambda r: (r["attention"], r["remat"], r["batch"])  # noqa: E731
    by = {(r["xla_flags"],) + key(r): r for r in fits}
    for r in fits:
        other = by.get(("off",) + key(r))
        if r["xla_flags"] == "on" and other:
            out.append(f"flags on/off step-time ratio {r['step_s'] / other['step_s']:.2f} ({key(r)})")
    for r in fits:
        base = by.get((r["xla_flags"], "xla", r["remat"], r["batch"]))
        if r["attention"] != "xla" and base:
            out.append(f"{r['attention']}/xla step-time ratio {r['step_s'] / base['step_s']:.2f} "
                       f"(remat {r['remat']}, batch {r['batch']})")
    for r in rows:
        if r.get("profile"):
            from stiv_jax.training.profile_breakdown import format_breakdown
            out.append(f"profile ({key(r)}): {format_breakdown(r['profile'])}")
    return out


def versions() -> str:
    import jax
    import jaxlib
    device = jax.devices()[0]
    return (f"device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, jaxlib "
            f"{jaxlib.__version__}, {os.cpu_count()} CPU cores visible")


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.child:
        rows = run_flag_set(args, os.environ.get("STIV_BENCH_FLAG_SET", "off"))
        with open(args.child, "w") as f:
            json.dump(rows, f)
        return
    import jax
    flag_sets = [s for s in args.xla_flags.split(",") if s] if jax.default_backend() == "gpu" else ["n/a"]
    rows = []
    if flag_sets == ["n/a"]:
        rows = run_flag_set(args, "n/a")
    else:
        from stiv_jax.launch import xla_flags
        for flag_set in flag_sets:   # XLA reads XLA_FLAGS once per process: one child per set
            out = f"/tmp/stiv_mfu_{os.getpid()}_{flag_set}.json"
            env = dict(os.environ, STIV_BENCH_FLAG_SET=flag_set, PYTHONPATH=ROOT,
                       XLA_FLAGS=xla_flags.gpu_xla_flags(enabled=flag_set == "on",
                                                         base=os.environ.get("XLA_FLAGS", "")))
            child = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--write")]
            subprocess.run([sys.executable, os.path.abspath(__file__), *child, f"--child={out}"], env=env,
                           check=True)
            with open(out) as f:
                rows += json.load(f)
    report(args, rows, argv)


def report(args, rows, argv):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    command = "python bench/mfu.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                if not a.startswith(("--write", "--json")))
    text = (f"## mfu\n\nCommand: `{command.strip()}`\n\n{versions()}; model `{args.config}:size={args.size}` at "
            f"{args.frames}x{args.resolution}x{args.resolution}, median of {args.steps} steps after {args.warmup} "
            f"warm-up steps; bench process CPU {usage.ru_utime + usage.ru_stime:.1f} s.\n\n{table(rows)}\n\n"
            + "\n".join(f"- {line}" for line in summary_lines(rows)) + "\n")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from report import write_section
        write_section(text, os.path.join(ROOT, "BENCHMARKS.md"))


if __name__ == "__main__":
    main()
