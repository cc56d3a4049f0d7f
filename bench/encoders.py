r"""Throughput of the text encoders and the VAE (random weights at the public architectures' sizes).

  python bench/encoders.py                       # CPU-sized default set
  python bench/encoders.py --cases=clip-bigg,t5-xxl,sd-vae@256 --batch=8 --write

Prints a table (forward ms per batch, items/s, parameters) and, with --write, replaces the `## encoders`
section of BENCHMARKS.md with it and the producing command. Timings are after one compile+warm-up call, median of
--repeats calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stiv_jax.encoders import bert, clip_text, t5, vae  # noqa: E402

TEXT_CASES = {
    "minilm": lambda: bert.BertEncoder(bert.MINILM_L6),  # all-MiniLM-L6-v2 (the demo's)
    "clip-l": lambda: clip_text.CLIPTextTransformer(clip_text.CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        hidden_act="quick_gelu")),
    "clip-bigg": lambda: clip_text.CLIPTextTransformer(clip_text.CLIP_BIGG),  # 32 x 1280 x 20 (paper)
    "t5-base": lambda: t5.T5Encoder(t5.T5Config(d_model=768, d_ff=2048, num_layers=12, num_heads=12,
                                                         feed_forward_proj="gated-gelu")),
    "t5-xxl": lambda: t5.T5Encoder(t5.T5_XXL),
}
VAE_CASES = {
    "sd-vae": vae.SD_VAE,  # SD / SDXL: 4 channels
    "flux-vae": vae.FLUX_VAE,
}


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def bench_text(name, batch, tokens, repeats):
    model = TEXT_CASES[name]()
    ids = jnp.zeros((batch, tokens), jnp.int32)
    mask = jnp.ones((batch, tokens), bool)
    params = jax.jit(lambda: model.init(jax.random.key(0), ids, mask)["params"])()
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    fn = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).sequence)
    seconds = _time(fn, params, ids, mask, repeats=repeats)
    return dict(case=f"{name} text {batch}x{tokens} tok", params=_count(params), ms=seconds * 1e3,
                rate=f"{batch / seconds:.1f} captions/s")


def bench_vae(name, size, batch, repeats):
    config = VAE_CASES[name]
    model = vae.AutoencoderKL(config)
    images = jnp.zeros((batch, size, size, 3))
    params = jax.jit(lambda: model.init(jax.random.key(0), images[:1])["params"])()
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=vae.AutoencoderKL.encode_moments)[0])
    f = config.downsample_factor
    latents = jnp.zeros((batch, size // f, size // f, config.latent_channels))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=vae.AutoencoderKL.decode))
    rows = []
    for what, fn, x in (("encode", encode, images), ("decode", decode, latents)):
        seconds = _time(fn, params, x, repeats=repeats)
        rows.append(dict(case=f"{name} {what} {batch}x{size}px", params=_count(params), ms=seconds * 1e3,
                         rate=f"{batch / seconds:.2f} frames/s"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="minilm,clip-l,t5-base,sd-vae@64",
                        help=f"comma list of {sorted(TEXT_CASES)} and VAE cases {sorted(VAE_CASES)} as NAME@SIZE")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="replace the '## encoders' section of BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        name, _, size = case.partition("@")
        if name in TEXT_CASES:
            rows.append(bench_text(name, args.batch, args.tokens, args.repeats))
        elif name in VAE_CASES:
            rows.extend(bench_vae(name, int(size or 256), args.batch, args.repeats))
        else:
            parser.error(f"unknown case {case!r}")
        print(rows[-1])
    device = jax.devices()[0]
    header = (f"Device: {device.platform} {getattr(device, 'device_kind', '')} x{jax.device_count()}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; fp32, random weights.")
    table = ["| case | parameters | ms / batch | throughput |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {r['case']} | {r['params'] / 1e6:.1f}M | {r['ms']:.1f} | {r['rate']} |" for r in rows]
    text = "\n".join([header, "", *table])
    print(text)
    if args.write:
        command = "python bench/encoders.py " + " ".join(sys.argv[1:])
        section = f"## encoders\n\n`{command}`\n\n{text}\n"
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")
        old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
        pattern = re.compile(r"## encoders\n.*?(?=\n## |\Z)", re.S)
        new = pattern.sub(section.rstrip("\n"), old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
        with open(path, "w") as f:
            f.write(new if new.endswith("\n") else new + "\n")


if __name__ == "__main__":
    main()
