"""Remat with host offload (``config.model.remat_policy='offload_self_attention'`` / ``'custom'``): the saved
activations are placed in pinned host memory in the TPU compile (libtpu's compile-only devices, whose
``memory_analysis`` reports ``host_temp_size_in_bytes``), and the named per-tensor placement is validated.

Measured with libtpu 0.0.42 (BENCHMARKS.md ``## compile``): the device temporaries of these small programs do not
shrink by the offloaded bytes (the compiler keeps device staging buffers), so only the host placement is asserted.
"""
import jax
import jax.numpy as jnp
import pytest

from stiv_jax.model.config import DiTConfig
from stiv_jax.model.dit import STIVDiT, remat_policy

from test_dit import BASE, init_params, make_inputs

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates


def _tpu_memory(policy: str, custom=()):
    """memory_analysis of the DiT's gradient on one compile-only v5e chip, with remat ``policy``."""
    pytest.importorskip("libtpu")
    from stiv_jax import compile as compile_lib
    config = DiTConfig.from_config({**BASE, "remat_policy": policy, "remat_custom": custom, "depth": 1})
    inputs = make_inputs(batch=2, frames=8)
    inputs["latents"] = jnp.zeros((2, 8, 32, 32, 4))          # 8 frames x 256 tokens
    params = init_params(config, make_inputs(batch=2))
    model = STIVDiT(config)
    grad = jax.grad(lambda p, x: jnp.mean(jnp.square(model.apply({"params": p}, **x))))
    device = compile_lib.topology_devices(compile_lib.parse_topology("v5e-1"))[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    return jax.jit(grad).lower(abstract(params), abstract(inputs)).compile().memory_analysis()


TOKENS = 2 * 8 * 256   # batch x frames x spatial tokens
BLOCKS = 2             # 1 block + 1 MaskDiT decoder block


def test_offloading_the_self_attention_outputs_places_them_in_host_memory():
    memory = _tpu_memory("offload_self_attention")
    saved = 2 * BLOCKS * TOKENS * 64 * 4      # spatial + temporal SA outputs, width 64, float32
    assert memory.host_temp_size_in_bytes >= 0.9 * saved, memory.host_temp_size_in_bytes


def test_custom_placement_per_tensor_name():
    """Only the FFN hidden (4x wider) offloaded, the self-attention outputs kept on device: host bytes are the
    FFN's, not the attention outputs'."""
    memory = _tpu_memory("custom", (("spatial_attention", "device"), ("temporal_attention", "device"),
                                    ("ffn_hidden", "offload")))
    ffn_hidden = BLOCKS * TOKENS * 256 * 4
    assert 0.9 * ffn_hidden <= memory.host_temp_size_in_bytes < 2.5 * ffn_hidden, memory.host_temp_size_in_bytes


def test_custom_placement_errors_name_the_key():
    with pytest.raises(ValueError, match=r"remat_custom\['ffn_hidden'\]='disk'"):
        DiTConfig.from_config({**BASE, "remat_policy": "custom", "remat_custom": {"ffn_hidden": "disk"}})
    with pytest.raises(ValueError, match="needs config.model.remat_custom"):
        DiTConfig.from_config({**BASE, "remat_policy": "custom"})
    with pytest.raises(ValueError, match="not tagged tensors"):
        remat_policy("custom", (("qkv", "offload"),))
    config = DiTConfig.from_config({**BASE, "remat_policy": "custom", "remat_custom": {"ffn_hidden": "offload"}})
    assert config.remat_custom == (("ffn_hidden", "offload"),)   # a dict becomes hashable pairs
