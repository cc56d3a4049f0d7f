r"""Train-step accounting: XLA's compiled FLOPs vs the analytic STIV count, and collective wire bytes under FSDP.

  python bench/step.py --devices=8 [--width=256 --depth=4 --resolution=64 --frames=8 --batch=8]

Compiles the real train step (demo config, trainable byte text encoder, AdaFactor) as the pod configs run it:
blocks under ``nn.scan``, the paper's remat (``self_attention``: only the self-attention outputs are saved), bf16
compute over fp32 weights, on fake CPU devices with an FSDP-only mesh (``fsdp = devices``, preset ``fsdp``), then

* compares the FLOPs of the optimized HLO (``stiv_jax.parallel.hlo_cost``: every loop body times its trip count,
  so the scanned blocks count ``depth`` times) and ``cost_analysis()`` (a loop body once) with
  ``stiv_jax.training.flops.train_step_flops`` (3 x forward, matmuls only; remat recomputation not counted);
* counts the wire bytes each device sends per collective kind (ring algorithms: all-gather and reduce-scatter
  ``(n-1)/n`` of the full tensor, all-reduce ``2 (n-1)/n``), loop bodies times trip counts, and compares them
  with the FSDP minimum of this schedule: with scanned, rematerialised blocks the backward gathers every weight
  again, so each sharded parameter is gathered twice and its gradient reduce-scattered once
  (``3 (n-1)/n x`` its bytes), and each replicated parameter's gradient is all-reduced (``2 (n-1)/n x``).

Prints a table and replaces the ``## step`` section of BENCHMARKS.md. CPU compiles give the partitioner's
decisions (which collectives, how many bytes), not TPU timings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from report import write_section  # bench/report.py (sys.path[0] is bench/)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (the pod configs: bfloat16)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "BENCHMARKS.md"))
    return parser.parse_args()


def main():
    args = parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    import numpy as np
    from experiments import demo
    from stiv_jax.parallel import hlo_cost
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.parallel import rules as rules_lib
    from stiv_jax.training.compiled import compile_train_step
    from stiv_jax.training import flops as flops_lib
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer

    config = demo.get_config()
    config.model.depth, config.model.width, config.model.num_heads = args.depth, args.width, args.heads
    config.text.kind, config.text.dim, config.text.max_length = "token_embedding", 128, 32
    config.data.frames, config.data.resolution, config.data.batch_size = args.frames, args.resolution, args.batch
    config.optim.name, config.optim.b2 = "adafactor", 0.999
    config.model.scan_layers, config.model.remat_policy, config.model.dtype = True, "self_attention", args.dtype
    config.mesh.ici = dict(data=1, fsdp=args.devices, context=1, tensor=1)
    config.mesh.rules = "fsdp"
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    boxed_fn = lambda: bundle.init_boxed_params(jax.random.key(0))  # noqa: E731
    abstract, shardings = state_lib.state_shardings(boxed_fn, tx, mesh, rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    b, f, r, length = args.batch, args.frames, args.resolution, config.text.max_length
    host = {"video": np.zeros((b, f, r, r, 3), np.uint8), "text_ids": np.ones((b, length), np.int32),
            "text_mask": np.ones((b, length), bool)}
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=mesh_lib.batch_sharding(mesh, rules, v.ndim))
             for k, v in host.items()}
    start, cpu = time.perf_counter(), time.process_time()
    compiled, _ = compile_train_step(config, bundle, tx, state=state, batch=batch, frozen={},
                                     shardings=shardings, mesh=mesh, rules=rules)
    compile_s, compile_cpu = time.perf_counter() - start, time.process_time() - cpu
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = hlo_cost.analyze(compiled.as_text(), num_devices=args.devices)
    n = args.devices
    analytic = flops_lib.train_step_flops(bundle.dit.config, latent_shape=bundle.latent_shape,
                                          text_length=bundle.text_length, text_dim=config.text.dim, batch_size=b)
    param_bytes = sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(abstract.params))
    _, replicated = rules_lib.sharded_fraction(abstract.params, shardings.params, "fsdp")
    replicated_bytes = sum(nbytes for _, nbytes in replicated)
    sharded_bytes = param_bytes - replicated_bytes
    minimum = (n - 1) / n * (3 * sharded_bytes + 2 * replicated_bytes)

    model = (f"DiT depth {args.depth} (+{config.model.decoder_depth} MaskDiT decoder blocks), width {args.width}, "
             f"{args.frames}x{r}x{r} px -> latents {bundle.latent_shape}, batch {b}, MaskDiT "
             f"{config.model.mask_ratio:.0%}; {param_bytes / 2**20:.2f} MiB fp32 params "
             f"({replicated_bytes / 2**20:.2f} MiB replicated); {n} fake CPU devices, mesh fsdp={n}, AdaFactor, "
             f"scanned blocks, remat self_attention, {args.dtype} compute; loops found {hlo.loops}; compile "
             f"{compile_s:.0f} s wall, {compile_cpu:.0f} s CPU")
    rows = [("HLO FLOPs / step (loop bodies x trip counts, x devices)", f"{hlo.flops * n:.4g}"),
            ("cost_analysis FLOPs / step (loop bodies once, x devices)", f"{float(cost['flops']) * n:.4g}"),
            ("analytic FLOPs / step (3 x forward, matmuls, no remat)", f"{analytic:.4g}"),
            ("HLO / analytic (remat recomputes the forward's non-saved part)", f"{hlo.flops * n / analytic:.3f}")]
    for kind in hlo_cost.COLLECTIVES:
        if kind in hlo.wire_bytes:
            rows.append((f"{kind}: wire bytes sent / device / step",
                         f"{hlo.wire_bytes[kind] / 2**20:.2f} MiB ({hlo.collective_count[kind]:.0f} ops, full "
                         f"tensors {hlo.collective_bytes[kind] / param_bytes:.2f}x params)"))
    rows += [("FSDP minimum for this schedule (n-1)/n (3 x sharded + 2 x replicated)", f"{minimum / 2**20:.2f} MiB"),
             ("collective wire bytes / FSDP minimum", f"{hlo.total_wire_bytes / minimum:.2f}")]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)
    command = ("python bench/step.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))).strip()
    text = (f"## step\n\nCommand: `{command}`\n\n{model}.\n\n| quantity{' ' * (width - 8)} | value |\n"
            f"|{'-' * (width + 2)}|-------|\n{table}\n\n"
            "Wire bytes are what each device sends under ring algorithms, summed over the optimized per-device HLO "
            "with every loop body counted as often as it runs (stiv_jax.parallel.hlo_cost). The minimum assumes "
            "the gathers and the gradient reduction move the fp32 parameters; a ratio below 1 means XLA moves "
            "some of them in bf16 (the cast happens before the gather) or keeps a gathered weight for the "
            "backward, above 1 extra traffic (activation resharding, replicated-gradient all-reduces in place of "
            "reduce-scatters). CPU partitioning, not TPU timings.\n")
    print(text)
    write_section(text, args.out)


if __name__ == "__main__":
    main()
