"""The analytic STIV FLOP count agrees with XLA's cost analysis of the compiled forward pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.training import flops as flops_lib
from stiv_jax.model.bundle import build_model_bundle
from trainer_testlib import tiny_config


def test_analytic_forward_flops_match_compiled_cost_analysis_within_5_percent():
    config = tiny_config(**{"model.width": 128, "model.num_heads": 2, "model.depth": 2, "text.dim": 64,
                            "data.resolution": 32, "data.frames": 4})
    bundle = build_model_bundle(config)
    params = jax.eval_shape(lambda: nn.unbox(bundle.init_boxed_params(jax.random.key(0))))
    batch = 2
    latents = jax.ShapeDtypeStruct((batch,) + bundle.latent_shape, jnp.float32)

    def forward(params, latents):
        text = jnp.zeros((batch, bundle.text_length, config.text.dim))
        return bundle.dit.apply({"params": params["dit"]}, latents, timesteps=jnp.zeros((batch,)), text=text,
                                text_mask=jnp.ones((batch, bundle.text_length), bool),
                                pooled_text=jnp.zeros((batch, config.text.dim)),
                                micro_conditions=bundle.micro_conditions(batch))

    cost = jax.jit(forward).lower(params, latents).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = batch * flops_lib.model_forward_flops(bundle.dit.config, latent_shape=bundle.latent_shape,
                                                     text_length=bundle.text_length, text_dim=config.text.dim)
    # XLA also counts elementwise work (norms, softmax, GELU) that the matmul-only formula leaves out.
    assert 1.0 <= cost["flops"] / analytic < 1.05, (cost["flops"], analytic)


def test_block_flops_count_bidirectional_attention_in_full():
    one = flops_lib.block_forward_flops(frames=1, spatial_tokens=256, width=64, mlp_hidden=256, text_length=8)
    two = flops_lib.block_forward_flops(frames=1, spatial_tokens=512, width=64, mlp_hidden=256, text_length=8)
    # Doubling the tokens doubles the projections and quadruples the score/value matmuls (4 * S^2 * d).
    assert two.spatial_attention - 2 * one.spatial_attention == 8 * 256 ** 2 * 64
    assert flops_lib.peak_tflops_per_device("TPU v5 lite") == 197.0
    assert flops_lib.peak_tflops_per_device("cpu") is None
