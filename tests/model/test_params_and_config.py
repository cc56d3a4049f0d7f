"""Parameter counts (eval_shape, nothing allocated), AdaLN modes, config errors, attention implementations."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT
from stiv_jax import summary
from stiv_jax.model import attention_kernels
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.sizes import PAPER_LABELS
from numerics import assert_close

PAPER = dict(latent_channels=8, text_dim=1280, temporal_patch=2)   # spec: 8-ch VAE, CLIP-bigG 1280, t-patch 2


def per_block_counts(d: int, head_dim: int) -> dict[str, int]:
    """Analytic per-block parameter counts: attention = q, k, v, out (+ biases) + QK RMSNorm scales."""
    attention = 4 * d * d + 4 * d + 2 * head_dim
    return {"spatial_attn": attention, "temporal_attn": attention, "cross_attn": attention,
            "ffn": 8 * d * d + 4 * d + d}


@pytest.mark.parametrize("size", ["XL", "XXL", "M"])
def test_param_counts_of_paper_sizes(size):
    config = DiTConfig.from_config(dict(size=size, **PAPER))
    counts = summary.count_params(config)
    d, depth = config.width, config.depth
    for name, per_block in per_block_counts(d, 64).items():
        assert counts[f"blocks.{name}"] == depth * per_block, name
        assert counts[f"decoder blocks.{name}"] == 2 * per_block, name
    assert counts["shared AdaLN"] == d * 6 * d + 6 * d
    conventions = summary.convention_counts(counts)
    assert conventions["total"] == sum(counts.values())
    label = PAPER_LABELS[size]
    # The convention that reproduces each label within 2% (documented in stiv_jax/summary.py).
    matching = {"XL": "blocks_t2i", "XXL": "model_t2i", "M": "blocks_video"}[size]
    assert abs(conventions[matching] / label - 1) < 0.02, (size, conventions)
    # ...and the paper's sizes really are inconsistent: main-block weights miss XXL's label by more than 2%.
    if size == "XXL":
        assert conventions["blocks_t2i"] / label - 1 < -0.02


def test_shared_vs_per_block_adaln_parameter_difference():
    for temporal_adaln, outputs in [(False, 6), (True, 9)]:
        shared = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2, temporal_adaln=temporal_adaln))
        per_block = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2, adaln="per_block",
                                               temporal_adaln=temporal_adaln))
        d, blocks = shared.width, 3 + 2
        linear = d * outputs * d + outputs * d                # Linear(d -> outputs * d) with bias
        counts_shared, counts_per_block = summary.count_params(shared), summary.count_params(per_block)
        assert sum(counts_per_block.values()) - sum(counts_shared.values()) == (blocks - 1) * linear
        assert counts_per_block["blocks.adaln"] == 3 * linear and counts_shared["shared AdaLN"] == linear


def test_t2i_model_has_no_temporal_attention_parameters():
    counts = summary.count_params(DiTConfig.from_config(dict(size="tiny", temporal_attention=False)))
    assert "blocks.temporal_attn" not in counts and "blocks.spatial_attn" in counts


def test_config_errors_name_the_key_to_change():
    with pytest.raises(ValueError, match=r"unknown keys \['widht'\]"):
        DiTConfig.from_config(dict(widht=64))
    with pytest.raises(ValueError, match="config.model.size='XXXL'.*valid sizes"):
        DiTConfig.from_config(dict(size="XXXL"))
    with pytest.raises(ValueError, match="config.model.adaln='per_layer'"):
        DiTConfig.from_config(dict(adaln="per_layer"))
    with pytest.raises(ValueError, match="config.model.remat_policy"):
        DiTConfig.from_config(dict(remat_policy="minimal"))
    with pytest.raises(ValueError, match="decoder_depth"):
        DiTConfig.from_config(dict(mask_ratio=0.5, decoder_depth=0))
    with pytest.raises(ValueError, match="temporal_patch"):
        DiTConfig.from_config(dict(temporal_patch=3))
    # A size fills depth/width/heads; explicit keys override it.
    config = DiTConfig.from_config(dict(size="XL", depth=2))
    assert (config.depth, config.width, config.num_heads, config.head_dim) == (2, 1152, 18, 64)


def attention_inputs():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 16, 2, 8))
    k = jax.random.normal(keys[1], (2, 16, 2, 8))
    v = jax.random.normal(keys[2], (2, 16, 2, 8))
    return q, k, v, jnp.array([[True] * 10 + [False] * 6, [False] * 16])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_implementations_agree_and_empty_rows_are_zero(causal):
    q, k, v, mask = attention_inputs()
    outs = {}
    for impl in ["xla", "dot_product"]:
        config = DiTConfig.from_config(dict(size="tiny", attention_impl=impl))
        outs[impl] = jax.jit(lambda q, k, v, m, c=config: attention_kernels.attention(
            q, k, v, kv_mask=m, causal=causal, config=c))(q, k, v, mask)
    # One softmax-weighted sum in another kernel's order: a few eps of the output's scale.
    assert_close(outs["dot_product"], outs["xla"], ulps=32)
    np.testing.assert_array_equal(outs["xla"][1], 0.0)          # the empty prompt attends to nothing
    # Padded keys are ignored: changing them changes nothing.
    v_pad = v.at[0, 10:].add(5.0)
    config = DiTConfig.from_config(dict(size="tiny"))
    again = attention_kernels.attention(q, k, v_pad, kv_mask=mask, causal=causal, config=config)
    assert_close(again[0], outs["xla"][0], ulps=32)


def test_splash_attention_off_tpu_is_a_clear_error():
    q, k, v, mask = attention_inputs()
    config = DiTConfig.from_config(dict(size="tiny", attention_impl="splash"))
    with pytest.raises(ValueError, match="needs a TPU.*attention_impl='xla'"):
        attention_kernels.attention(q, k, v, kv_mask=mask, config=config)


def test_summary_cli_prints_components_and_conventions():
    out = subprocess.run([sys.executable, "-m", "stiv_jax.summary", "--config=experiments/demo.py",
                          "--config.model.size=XL", "--config.model.decoder_depth=2"],
                         cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    assert "blocks.spatial_attn" in out and "micro-condition embeddings" in out
    assert "blocks_t2i" in out and "vs paper 0.6B" in out


def test_splash_attention_kernel_in_interpret_mode_matches_xla_under_a_mesh():
    """The Pallas splash kernel (interpret mode on CPU) through its shard_map wrapper on 8 devices."""
    import ml_collections
    from stiv_jax.parallel import mesh as mesh_lib
    config = DiTConfig.from_config(dict(size="tiny", attention_impl="splash", splash_interpret=True,
                                        splash_block_q=128, splash_block_kv=128, splash_block_kv_compute=128))
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 128, 2, 64))
    k, v = (jax.random.normal(key, (2, 256, 2, 64)) for key in keys[1:])
    mask = jnp.array([[True] * 200 + [False] * 56, [True] * 256])
    mesh_config = ml_collections.ConfigDict(dict(ici=dict(data=2, fsdp=1, context=2, tensor=2), logical_rules=()))
    with mesh_lib.activate(mesh_lib.build_mesh(mesh_config), mesh_lib.logical_rules(mesh_config)):
        out = jax.jit(lambda q, k, v, m: attention_kernels.attention(q, k, v, kv_mask=m, config=config))(
            q, k, v, mask)
    # Blockwise online softmax (2 kv blocks) vs one softmax: rescaling adds a few eps per block.
    assert_close(out, attention_kernels.xla_attention(q, k, v, kv_mask=mask), ulps=64)
    assert out.sharding.spec[0] == "data"     # batch stays sharded through the kernel


SPLASH_AOT = """
import jax, jax.numpy as jnp, ml_collections
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P
from stiv_jax.model import attention_kernels
from stiv_jax.model.config import DiTConfig
from stiv_jax.parallel import mesh as mesh_lib
topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
                                    chips_per_host_bounds=(2, 2, 1), num_slices=1)
mesh_config = ml_collections.ConfigDict(dict(ici=dict(data=2, fsdp=1, context=1, tensor=2), logical_rules=()))
mesh, rules = mesh_lib.build_mesh(mesh_config, topo.devices), mesh_lib.logical_rules(mesh_config)
config = DiTConfig.from_config(dict(size="tiny", attention_impl="splash", dtype="bfloat16", splash_block_q=256,
                                    splash_block_kv=256, splash_block_kv_compute=256))
tokens = NamedSharding(mesh, P("data", None, "tensor", None))
q = jax.ShapeDtypeStruct((4, 1024, 8, 64), jnp.bfloat16, sharding=tokens)
mask = jax.ShapeDtypeStruct((4, 1024), jnp.bool_, sharding=NamedSharding(mesh, P("data", None)))
loss = lambda q, k, v, m: attention_kernels.attention(q, k, v, kv_mask=m, config=config).astype(jnp.float32).sum()
with mesh_lib.activate(mesh, rules):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q, mask).compile()
print("splash kernels:", compiled.as_text().count("tpu_custom_call"))
"""


def test_splash_attention_compiles_for_a_tpu_topology_ahead_of_time():
    """Forward + backward of the splash wrapper (segment-id padding, shard_map, block sizes) lower for TPU v5e."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1", TPU_WORKER_HOSTNAMES="localhost",
               XLA_FLAGS="", ALLOW_MULTIPLE_LIBTPU_LOAD="1")   # other processes may hold libtpu's lockfile
    result = subprocess.run([sys.executable, "-c", SPLASH_AOT], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.rsplit("splash kernels:", 1)[1]) >= 2, result.stdout


def test_adaln_offsets_parameter_count():
    """shared_offsets = shared AdaLN + one [6, d] table per block (main and decoder), counted in the summary."""
    shared = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2))
    offsets = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2, adaln="shared_offsets"))
    counts_shared, counts_offsets = summary.count_params(shared), summary.count_params(offsets)
    d = shared.width
    assert counts_offsets["blocks.adaln_offsets"] == 3 * 6 * d
    assert counts_offsets["decoder blocks.adaln_offsets"] == 2 * 6 * d
    assert sum(counts_offsets.values()) - sum(counts_shared.values()) == 5 * 6 * d
    assert counts_offsets["shared AdaLN"] == counts_shared["shared AdaLN"] == d * 6 * d + 6 * d
    assert "blocks.adaln_offsets" in summary.format_summary(offsets, counts_offsets)


def test_temporal_gate_parameter_count():
    plain = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2))
    gated = DiTConfig.from_config(dict(size="tiny", depth=3, decoder_depth=2, temporal_gate=True))
    counts = summary.count_params(gated)
    assert counts["blocks.temporal_gate"] == 3 * gated.width
    assert sum(counts.values()) - sum(summary.count_params(plain).values()) == 5 * gated.width
