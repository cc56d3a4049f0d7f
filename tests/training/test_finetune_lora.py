"""LoRA and partial fine-tuning: exact base output at init, frozen weights bit-identical, optimizer state for the
trainable leaves only, exact resume of a LoRA run."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from trainer_testlib import build_run, synthetic_batch, tiny_config

from stiv_jax.checkpointing import exports
from stiv_jax.training import finetune
from numerics import assert_close

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates

LORA = dict(rank=4, alpha=8.0, dropout=0.0, targets=r"(attn|ffn)/")


def with_finetune(config, *, trainable=(), lora=None):
    config.finetune = ml_collections.ConfigDict(dict(trainable=tuple(trainable), lora=dict(lora or dict(rank=0))))
    return config


def flat(tree):
    return {finetune.path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def velocity(bundle, params, seed=0, *, jit=True):
    latents = jax.random.normal(jax.random.key(seed), (2,) + bundle.latent_shape)
    ids, mask = bundle.tokenize(["a red ball", "waves at sunset"])
    fn = lambda p: bundle.velocity(p, latents, jnp.array([0.3, 0.8]), jnp.asarray(ids), jnp.asarray(mask))  # noqa
    return np.asarray(jax.jit(fn)(params) if jit else fn(params))


def test_lora_at_init_gives_exactly_the_base_output():
    from stiv_jax.model.bundle import build_model_bundle
    import flax.linen as nn
    base_config = tiny_config()
    base = build_model_bundle(base_config)
    base_params = nn.unbox(base.init_boxed_params(jax.random.key(3)))
    # A "trained" base: zero-initialised gates and output layers would hide every block's contribution.
    leaves, treedef = jax.tree.flatten(base_params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    base_params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    lora_bundle = build_model_bundle(with_finetune(tiny_config(), lora=LORA))
    lora_params = flat(nn.unbox(lora_bundle.init_boxed_params(jax.random.key(11))))
    base_flat = flat(base_params)
    adapters = {k for k in lora_params if k.endswith(("lora_a", "lora_b"))}
    assert set(lora_params) - adapters == set(base_flat)
    # Every attention and FFN projection of every block is adapted; nothing else is.
    assert {k.rsplit("/", 2)[0] for k in adapters} == {k.rsplit("/", 2)[0] for k in base_flat
                                                       if "_attn/" in k or "/ffn/" in k}
    merged = exports.unflatten({**lora_params, **base_flat})
    # Op by op, B = 0 adds exact zeros: bit-identical to the base. Compiled, XLA fuses the two programs
    # differently, which reorders float sums (a few ulp).
    np.testing.assert_array_equal(velocity(lora_bundle, merged, jit=False), velocity(base, base_params, jit=False))
    want = velocity(base, base_params)
    assert_close(velocity(lora_bundle, merged), want, ulps=256)   # a whole DiT fused another way
    moved = {k: (v + 0.05 if k.endswith("lora_b") else v) for k, v in flat(merged).items()}
    assert np.abs(velocity(lora_bundle, exports.unflatten(moved)) - want).max() > 1e-4


@pytest.mark.parametrize("preset, axes", [("default", ("fsdp",)), ("fsdp", ("fsdp",)),
                                           ("fsdp_context", ("fsdp", "context"))])
def test_every_adapter_factor_shards_its_wide_side_like_the_weights(preset, axes):
    """FSDP shards a kernel on its embed side; the factor that has none (B of query/key/value, A of out, the FFN's
    mlp side) would be whole on every chip (measured on M-512 at rank 64: +3.8 GiB per v5p-256 chip)."""
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.parallel.rules import DEFAULT_LOGICAL_RULES, preset_rules
    import flax.linen as nn
    bundle = build_model_bundle(with_finetune(tiny_config(), lora=LORA))
    specs = nn.get_partition_spec(jax.eval_shape(lambda: bundle.init_boxed_params(jax.random.key(0))))
    rules = DEFAULT_LOGICAL_RULES if preset == "default" else preset_rules(preset)
    adapters = {finetune.path_str(k): nn.logical_to_mesh_axes(s, rules) for k, s in
                jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
                if finetune.path_str(k).endswith(("lora_a", "lora_b"))}
    assert len(adapters) >= 8
    for name, spec in adapters.items():
        assert tuple(spec)[-2 if name.endswith("lora_a") else -1] in (axes, axes[0]), (name, spec)


def _train(config, steps=3):
    state, step_fn, mesh, rules, *_ = build_run(config)
    from stiv_jax.parallel import mesh as mesh_lib
    # A "trained" base: at a fresh init the zero gates and output layer give the blocks no gradient.
    shift = lambda t: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda k, x: x if "lora" in finetune.path_str(k) else x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)),
        t)
    state = state.replace(params=shift(state.params), ema_params=shift(state.ema_params))
    first = jax.device_get(state)
    with mesh_lib.activate(mesh, rules):
        for i in range(steps):
            state, metrics = step_fn(state, mesh_lib.host_to_global_batch(synthetic_batch(config, i), mesh, rules))
    return first, jax.device_get(state), metrics


def _opt_state_size(opt_state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(opt_state) if hasattr(x, "shape") and x.ndim)


@pytest.mark.parametrize("trainable, lora", [((), LORA), ((r"/temporal_attn/",), None)],
                         ids=["lora", "temporal_only"])
def test_frozen_parameters_stay_bit_identical_and_have_no_optimizer_state(trainable, lora):
    config = with_finetune(tiny_config(**{"optim.name": "adamw", "optim.b2": 0.999}), trainable=trainable, lora=lora)
    first, last, metrics = _train(config)
    assert int(metrics["update_skipped"]) == 0
    mask = flat(finetune.trainable_mask(first.params, finetune.trainable_patterns(config)))
    before, after, ema_before, ema_after = (flat(t) for t in (first.params, last.params, first.ema_params,
                                                                last.ema_params))
    trained = sorted(k for k, m in mask.items() if m)
    assert trained and len(trained) < len(mask)
    for k, m in mask.items():
        if m:
            continue
        assert before[k].tobytes() == after[k].tobytes(), k          # frozen: bit-identical
        assert ema_before[k].tobytes() == ema_after[k].tobytes(), k
    moved = [k for k in trained if not np.array_equal(before[k], after[k])]
    assert moved, "no trainable parameter moved"
    # AdamW holds two moments per trainable parameter and nothing for the frozen ones.
    trainable_size = sum(before[k].size for k in trained)
    assert _opt_state_size(last.opt_state) == 2 * trainable_size
    full = sum(v.size for v in before.values())
    assert 2 * trainable_size < full


def test_parameter_table_counts_every_group():
    from stiv_jax.model.bundle import build_model_bundle
    import flax.linen as nn
    config = with_finetune(tiny_config(), trainable=(r"/temporal_attn/",))
    params = nn.unbox(jax.eval_shape(lambda: build_model_bundle(config).init_boxed_params(jax.random.key(0))))
    table = finetune.describe(params, finetune.trainable_patterns(config))
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    temporal = sum(int(np.prod(v.shape)) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
                   if "/temporal_attn/" in finetune.path_str(k))
    assert rows["dit/block_*/temporal_attn"][:2] == [f"{temporal:,}", "0"]
    assert rows["dit/block_*/spatial_attn"][0] == "0"
    assert rows["total"][0] == f"{temporal:,}"
    with pytest.raises(ValueError, match="config.finetune.trainable"):
        finetune.trainable_mask(params, (r"no_such_param",))


def test_lora_run_resumes_exactly(demo_shards, tmp_path):
    from stiv_jax.train import train
    from trainer_testlib import assert_trees_equal

    def config(total):
        c = tiny_config(demo_shards, total_steps=total, checkpoint_every=2, keep_checkpoints=3)
        return with_finetune(c, lora=dict(LORA, dropout=0.1))   # dropout: the per-step rng must resume too
    straight = jax.device_get(train(config(4), str(tmp_path / "straight")))
    train(config(2), str(tmp_path / "resumed"))
    resumed = jax.device_get(train(config(4), str(tmp_path / "resumed")))
    assert int(resumed.step) == 4
    for tree in ("params", "ema_params", "opt_state"):
        assert_trees_equal(getattr(resumed, tree), getattr(straight, tree), what=tree)
