r"""Context-parallel self-attention: bytes moved and collectives per device, Ulysses vs ring vs hybrid vs GSPMD.

  python bench/context_attention.py [--context=8 --heads=8 --head_dim=64 --lengths=1024,4096,16384 \
      --time_up_to=4096]

For every sequence length it compiles the forward + backward pass of one self-attention ``[1, length, heads,
head_dim]`` (bf16, sequence sharded over ``context`` fake CPU devices, rules ``fsdp_context``) with each
``config.model.context_attention`` method and reads the optimized per-device HLO: the number of each collective
and its payload (result-shape bytes, ``bench/step.py``'s ``collective_bytes``). Up to ``--time_up_to`` tokens it
also times the compiled step on the CPU (wall and process CPU time, median of 3 after a warm-up): CPU fake
devices share two host cores, so the times show compute overheads of each method, not TPU step times.
Prints a table and replaces the ``## context_attention`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from report import write_section  # bench/report.py (sys.path[0] is bench/)

KINDS = ("collective-permute", "all-to-all", "all-gather", "all-reduce", "reduce-scatter")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--ulysses_sizes", default="2,4", help="hybrid group sizes to measure")
    parser.add_argument("--time_up_to", type=int, default=4096, help="time the CPU step up to this length")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "BENCHMARKS.md"))
    return parser.parse_args()


def _methods(args):
    return ([("gspmd", 1), ("ulysses", args.context), ("ring", 1)]
            + [("hybrid", int(u)) for u in args.ulysses_sizes.split(",") if u])


def measure(method: str, group: int, length: int, args, *, timed: bool) -> dict:
    """Compiles one attention's gradient for ``method`` and returns collective counts/bytes (and CPU times)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    from step import _COLLECTIVE, collective_bytes
    from stiv_jax.parallel import context_attention, mesh as mesh_lib
    from stiv_jax.parallel.rules import preset_rules

    mesh = mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": dict(data=1, context=args.context)}))
    shape = (1, length, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, w = (jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16) for key in keys)

    def attend(q, k, v):
        if method == "gspmd":
            return jax.nn.dot_product_attention(q, k, v)
        return context_attention.context_parallel_attention(q, k, v, method=method, ulysses_size=group)

    loss = lambda q, k, v: jnp.sum((attend(q, k, v) * w).astype(jnp.float32))  # noqa: E731
    with mesh_lib.activate(mesh, preset_rules("fsdp_context")):
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "context"))
        q, k, v, w = (jax.device_put(x, spec) for x in (q, k, v, w))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
        hlo = compiled.as_text()
        row = {"bytes": collective_bytes(hlo, args.context),
               "counts": {kind: sum(1 for line in hlo.splitlines()
                                    if (m := _COLLECTIVE.search(line)) and m.group(2) == kind) for kind in KINDS},
               "temp": compiled.memory_analysis().temp_size_in_bytes}
        if timed:
            jax.block_until_ready(compiled(q, k, v))
            walls, cpus = [], []
            for _ in range(3):
                wall, cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(compiled(q, k, v))
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            row["wall"], row["cpu"] = statistics.median(walls), statistics.median(cpus)
    return row


def _format(rows, args) -> str:
    head = ("| tokens | method | collective-permute | all-to-all | all-gather | all-reduce | payload MiB/device "
            "| vs ulysses | temporaries MiB/device | CPU wall s | CPU process s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for length, name, row in rows:
        base = next(r for l_, n, r in rows if l_ == length and n == "ulysses")
        total = sum(row["bytes"].values())
        ratio = total / max(sum(base["bytes"].values()), 1)
        timing = (f"{row['wall']:.3f} | {row['cpu']:.3f}" if "wall" in row else "not timed | not timed")
        counts = " | ".join(str(row["counts"][k]) for k in KINDS[:4])
        lines.append(f"| {length} | {name} | {counts} | {total / 2**20:.2f} | {ratio:.2f}x | "
                     f"{row['temp'] / 2**20:.1f} | {timing} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.context}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for method, group in _methods(args):
            name = f"hybrid (Ulysses groups of {group})" if method == "hybrid" else method
            rows.append((length, name, measure(method, group, length, args, timed=length <= args.time_up_to)))
            print(length, name, rows[-1], flush=True)
    command = ("python bench/context_attention.py " + " ".join(a for a in sys.argv[1:]
                                                                 if not a.startswith("--out"))).strip()
    text = (f"## context_attention\n\nCommand: `{command}`\n\nOne self-attention, forward + backward, "
            f"`[1, tokens, {args.heads} heads, {args.head_dim}]` bf16, the sequence sharded over context="
            f"{args.context} fake CPU devices (rules `fsdp_context`). Counts and payloads are read from the "
            "optimized per-device HLO (payload: the result bytes of every collective, per device). "
            "Temporaries: `memory_analysis()` of the CPU compile (scores and scratch; a CPU, not a TPU, figure). "
            "Times: the compiled step on the CPU (all fake devices share the host's 2 cores), median of 3, "
            "CPU-only, not accelerator step times; no accelerator was available for this benchmark.\n\n"
            f"{_format(rows, args)}\n\n"
            "Reading it: Ulysses moves 4 all-to-alls of the local q/k/v/out per pass (payload independent of the "
            "context size); the ring moves the local k/v C - 1 times forward and k, v, dk, dv in the backward "
            "(XLA reuses the forward hops for k/v here; dk/dv travel as float32 accumulators, twice the bf16 bytes), so several times Ulysses' bytes, in exchange for any "
            "head count, no all-to-all, and hops that overlap with the next block's compute on TPU. The hybrid "
            "sits between (ring over C / group members). GSPMD partitions the plain attention by gathering keys "
            "and values (all-gathers of whole activations), the pattern the context-parallel methods avoid.\n")
    print(text)
    write_section(text, args.out)


if __name__ == "__main__":
    main()
