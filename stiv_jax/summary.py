r"""Parameter counts of the STIV DiT per component and in total, via ``jax.eval_shape`` (nothing is allocated).

  python -m stiv_jax.summary --config=experiments/demo.py
  python -m stiv_jax.summary --config=experiments/demo.py --config.model.size=M --config.model.temporal_patch=2 \
      --config.text.dim=1280

Counting conventions against the paper's Tab. 1 labels (600M / 1.5B / 8.7B; spec section 3), with MLP ratio 4,
text dim 1280, 8 latent channels, temporal patch 2:

  convention (CONVENTIONS)                                   XL       XXL      M
  blocks_t2i   main blocks: spatial SA + cross-attn + FFN    -0.8%    -4.3%    -20.1%
  blocks_video main blocks incl. temporal SA                 +24.0%   +19.6%   -0.2%
  model_t2i    all params except temporal SA and decoder     +3.6%    -1.3%    -18.2%
  model_video  all params except the MaskDiT decoder         +28.5%   +25.6%   +1.7%

The labels are not counted consistently: XL and M are matched within 2% by main-block weights (XL without
temporal SA, M with it), but that convention puts XXL 4.3% under 1.5B. XXL is within 2% only by model_t2i, which
puts XL 3.6% over. No additive convention reaches 2% for both XL and XXL: anything added on top of the XL/XXL
block weights grows at most as width^2 (ratio 1.78 from XL to XXL), while XL tolerates at most 17.5M and XXL
needs at least 36M more.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.model.config import DiTConfig
from stiv_jax.model.dit import STIVDiT
from stiv_jax.model.sizes import PAPER_LABELS

SUBLAYERS = ("spatial_attn", "temporal_attn", "full_attn", "cross_attn", "ffn", "adaln")
TOP_LEVEL = {"patch_embed": "patch embedding", "adaln": "shared AdaLN", "text_proj": "text sequence projection",
             "mask_token": "MaskDiT mask token", "final_adaln": "final layer", "final_proj": "final layer"}


def component_of(path: tuple[str, ...]) -> str:
    """The summary component of the parameter at ``path`` (names of the unboxed ``params`` tree)."""
    head = path[0]
    if head == "condition":
        sub = path[1]
        return {"micro": "micro-condition embeddings", "pooled_text": "pooled text projection"}.get(
            sub, "timestep embedding")
    stack = head.rsplit("_", 1)[0] if head[-1].isdigit() else head.rstrip("s")
    if stack in ("block", "decoder_block"):
        prefix = "blocks" if stack == "block" else "decoder blocks"
        return f"{prefix}.{path[1]}"
    return TOP_LEVEL.get(head, head)


def count_params(config: DiTConfig) -> dict[str, int]:
    """``{component: parameter count}`` of the DiT for ``config``, traced with ``jax.eval_shape``."""
    # Counting is independent of scan/remat and the input size; scanning traces fastest.
    config = dataclasses.replace(config, scan_layers=True, remat_policy="none")
    model = STIVDiT(config)
    p = config.patch_size
    latents = jax.ShapeDtypeStruct((1, config.temporal_patch, p, p, config.latent_channels), jnp.float32)
    text = jax.ShapeDtypeStruct((1, 1, config.text_dim), jnp.float32)

    def init(latents, text):
        return model.init(jax.random.key(0), latents, timesteps=jnp.zeros((1,)), text=text,
                          text_mask=jnp.ones((1, 1), bool), pooled_text=text[:, 0],
                          micro_conditions=jnp.zeros((1, 6)))["params"]

    shapes = jax.eval_shape(init, latents, text)
    counts: dict[str, int] = defaultdict(int)
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = tuple(str(getattr(k, "key", k)) for k in path)
        value = getattr(leaf, "value", leaf)   # LogicallyPartitioned box -> ShapeDtypeStruct
        counts[component_of(names)] += int(np.prod(value.shape))
    return dict(counts)


def _sum(counts, names):
    return sum(counts.get(n, 0) for n in names)


# name -> (description, components). "Main blocks" are the config.model.depth STIV blocks.
CONVENTIONS = {
    "blocks_t2i": ("main-block weights without temporal SA (spatial/full SA + cross-attn + FFN)",
                   ["blocks.spatial_attn", "blocks.full_attn", "blocks.cross_attn", "blocks.ffn"]),
    "blocks_video": ("main-block weights with temporal SA",
                     ["blocks.spatial_attn", "blocks.temporal_attn", "blocks.full_attn", "blocks.cross_attn",
                      "blocks.ffn"]),
    "model_t2i": ("every parameter except temporal SA and the MaskDiT decoder (whole T2I model)", None),
    "model_video": ("every parameter except the MaskDiT decoder", None),
    "total": ("every parameter", None),
}


def convention_counts(counts: dict[str, int]) -> dict[str, int]:
    """``{convention: count}`` for ``CONVENTIONS``."""
    total = sum(counts.values())
    decoder = _sum(counts, [k for k in counts if k.startswith("decoder blocks.")])
    return {
        "blocks_t2i": _sum(counts, CONVENTIONS["blocks_t2i"][1]),
        "blocks_video": _sum(counts, CONVENTIONS["blocks_video"][1]),
        "model_t2i": total - decoder - counts.get("blocks.temporal_attn", 0),
        "model_video": total - decoder,
        "total": total,
    }


def format_summary(config: DiTConfig, counts: dict[str, int]) -> str:
    """A table of components and conventions; with a paper size, each convention's deviation from its label."""
    total = sum(counts.values())
    lines = [f"STIV DiT  size={config.size or '-'}  depth={config.depth}+{config.decoder_depth} decoder  "
             f"width={config.width}  heads={config.num_heads}  layout={config.attention_layout}  "
             f"adaln={config.adaln}", "", f"{'component':44s} {'params':>16s} {'share':>7s}"]
    for name in sorted(counts, key=lambda n: (n.count("."), n)):
        lines.append(f"{name:44s} {counts[name]:16,d} {counts[name] / total:7.1%}")
    lines += [f"{'total':44s} {total:16,d}", "", "counting conventions:"]
    label = PAPER_LABELS.get(config.size)
    for key, value in convention_counts(counts).items():
        note = f"  vs paper {label / 1e9:g}B: {value / label - 1:+.1%}" if label else ""
        lines.append(f"  {key:13s} {value:16,d}{note}   {CONVENTIONS[key][0]}")
    if label:
        lines.append("  paper labels (inconsistent, see stiv_jax/summary.py): XL 600M ~ blocks_t2i, "
                     "XXL 1.5B ~ model_t2i, M 8.7B ~ blocks_video or model_video, each within 2%")
    return "\n".join(lines)


def main(argv):
    del argv
    from stiv_jax.encoders.latent import build_latent_space
    run_config = _CONFIG.value
    # As build_model_bundle does, without loading the text encoder's weights (only its width matters).
    config = DiTConfig.from_config(dict(run_config.model, text_dim=run_config.text.dim,
                                        latent_channels=build_latent_space(run_config.latent, abstract=True).channels))
    print(format_summary(config, count_params(config)))


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config (experiments/*.py)", lock_config=True)
    app.run(main)
