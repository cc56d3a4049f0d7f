"""The STIV DiT end to end on a tiny size: T2I -> T2V init, MaskDiT, bf16, scan, causal and full-3D attention."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.model import maskdit
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.dit import STIVDiT, stack_block_params
from numerics import assert_close

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates

BASE = dict(size="tiny", depth=2, decoder_depth=1, latent_channels=4, text_dim=16)  # width 64, 4 heads


def make_config(**overrides) -> DiTConfig:
    return DiTConfig.from_config({**BASE, **overrides})


def make_inputs(batch=2, frames=4):
    keys = jax.random.split(jax.random.key(0), 4)
    text = jax.random.normal(keys[1], (batch, 5, 16))
    return dict(latents=jax.random.normal(keys[0], (batch, frames, 8, 8, 4)),
                timesteps=jax.random.uniform(keys[2], (batch,)),
                text=text, pooled_text=text.mean(1),
                text_mask=jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]] * (batch // 2), bool),
                micro_conditions=jnp.tile(jnp.array([[256.0, 256.0, 8.0, 0.0, 3.0, 20.0]]), (batch, 1)))


def init_params(config, inputs, keep_zero=()):
    """Random parameters of the right shapes (from ``jax.eval_shape``, no init compile), all live (so zero-init
    gates and outputs do not hide anything), except paths containing a ``keep_zero`` string, which are zero."""
    shapes = nn.unbox(jax.eval_shape(STIVDiT(config).init, jax.random.key(1), **inputs)["params"])
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(2)   # numpy: no per-shape compiles
    values = []
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        value = (1.0 if name.endswith("norm/scale") else 0.0) + 0.05 * rng.standard_normal(leaf.shape)
        if any(z in name for z in keep_zero):
            value = np.zeros(leaf.shape)
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree.unflatten(treedef, values)


def forward(config):
    model = STIVDiT(config)
    return jax.jit(lambda params, inputs, rng=None: model.apply({"params": params}, **inputs, mask_rng=rng))


@pytest.fixture(scope="module")
def base():
    """The base config, randomised params, inputs and the unmasked fp32 output."""
    config = make_config()
    inputs = make_inputs()
    params = init_params(config, inputs)
    return config, params, inputs, forward(config)(params, inputs)


def test_t2v_with_zero_init_temporal_output_reproduces_t2i_frame_by_frame():
    inputs = make_inputs(frames=3)
    t2i_config = make_config(temporal_attention=False)
    t2v_config = make_config(temporal_attention=True, zero_init_temporal_out=True)
    t2i_params = init_params(t2i_config, inputs)
    # T2V = T2I weights + fresh temporal attention (its output projection zero-initialised, the rest random).
    t2v_init = init_params(t2v_config, inputs, keep_zero=("temporal_attn/out",))
    t2v_params = jax.tree.map(lambda x: x, t2i_params)
    for name in t2v_init:
        if name.startswith(("block_", "decoder_block_")):
            t2v_params[name] = dict(t2v_params[name], temporal_attn=t2v_init[name]["temporal_attn"])
    video_out = forward(t2v_config)(t2v_params, inputs)

    b, f = inputs["latents"].shape[:2]
    per_frame = {k: jnp.repeat(v, f, axis=0) for k, v in inputs.items() if k != "latents"}
    per_frame["latents"] = inputs["latents"].reshape(b * f, 1, *inputs["latents"].shape[2:])
    image_out = forward(t2i_config)(t2i_params, per_frame).reshape(video_out.shape)
    assert float(jnp.abs(image_out).mean()) > 1e-2
    # The same per-frame computation batched differently (zero temporal branch): a few eps per block.
    assert_close(video_out, image_out, ulps=256)
    # Once the temporal output projection is non-zero, frames interact and the equality breaks.
    trained = jax.tree.map(lambda x: x, t2v_params)
    out_proj = trained["block_0"]["temporal_attn"]["out"]
    noise = 0.05 * jax.random.normal(jax.random.key(9), out_proj["kernel"].shape)
    trained["block_0"] = dict(trained["block_0"], temporal_attn=dict(
        trained["block_0"]["temporal_attn"], out=dict(out_proj, kernel=out_proj["kernel"] + noise)))
    assert not np.allclose(forward(t2v_config)(trained, inputs), image_out, atol=1e-3)


def test_maskdit_ratio_zero_equals_unmasked(base):
    config, params, inputs, unmasked = base
    # Ratio 0 still runs the gather / un-mask path with the tokens in random order: RoPE must follow each token.
    shuffled = forward(config)(params, inputs, jax.random.key(7))
    assert_close(shuffled, unmasked, ulps=256)   # tokens summed in another order in every attention
    masked = forward(dataclasses.replace(config, mask_ratio=0.5))(params, inputs, jax.random.key(7))
    assert masked.shape == unmasked.shape and np.all(np.isfinite(masked))
    assert not np.allclose(masked, unmasked, atol=1e-3)


def test_maskdit_keeps_the_same_spatial_positions_in_every_frame_and_the_ratio():
    keep = maskdit.sample_keep_indices(jax.random.key(3), batch=3, num_spatial=16, ratio=0.5)
    assert keep.shape == (3, 8) and all(len(set(row.tolist())) == 8 for row in np.asarray(keep))
    mask = maskdit.keep_mask(jax.random.key(3), batch=3, grid_hw=(4, 4), ratio=0.5)
    assert mask.shape == (3, 4, 4) and np.all(mask.reshape(3, -1).sum(1) == 8)
    assert not np.array_equal(mask[0], mask[1])      # a fresh mask per sample
    tokens = jnp.arange(2 * 3 * 16 * 1, dtype=jnp.float32).reshape(2, 3, 16, 1) % 16   # value = spatial index
    kept = maskdit.gather_tokens(tokens, keep[:2])
    for t in range(3):                                 # every frame keeps the same positions
        np.testing.assert_array_equal(kept[:, t, :, 0], keep[:2])
    restored = maskdit.unmask_tokens(kept, keep[:2], jnp.full((1,), -1.0), 16)
    np.testing.assert_array_equal(restored[..., 0] >= 0, mask[:2].reshape(2, 1, 16).repeat(3, 1))


def test_bf16_compute_is_close_to_fp32(base):
    config, params, inputs, fp32 = base
    bf16 = forward(dataclasses.replace(config, dtype="bfloat16"))(params, inputs)
    assert bf16.dtype == jnp.float32
    rel = float(jnp.abs(bf16 - fp32).max() / jnp.abs(fp32).max())
    assert 0 < rel < 0.05, rel


def test_scanned_with_remat_equals_unscanned_with_the_same_weights(base):
    config, params, inputs, unscanned = base
    scanned_config = dataclasses.replace(config, scan_layers=True, remat_policy="self_attention")
    scanned_params = stack_block_params(stack_block_params(params, name="block"), name="decoder_block")
    assert scanned_params["blocks"]["ffn"]["wi"]["kernel"].shape == (2, 64, 256)
    assert_close(forward(scanned_config)(scanned_params, inputs), unscanned, ulps=64)
    # The scanned parameters carry the `layers` logical axis first.
    boxed = jax.eval_shape(STIVDiT(scanned_config).init, jax.random.key(0), **inputs)["params"]
    assert boxed["blocks"]["ffn"]["wi"]["kernel"].names == ("layers", "embed", "mlp")


def test_paper_remat_policy_saves_only_self_attention_outputs(base, capsys):
    config, params, inputs, _ = base
    model = STIVDiT(dataclasses.replace(config, remat_policy="self_attention"))
    loss = lambda p: model.apply({"params": p}, **inputs).sum()  # noqa: E731
    jax.ad_checkpoint.print_saved_residuals(loss, params)
    saved = capsys.readouterr().out
    assert "named 'spatial_attention'" in saved and "named 'temporal_attention'" in saved
    assert "named 'cross_attention'" not in saved and "named 'ffn_hidden'" not in saved
    # "full" keeps nothing inside a block; "dots" keeps matmul outputs but no named attention output.
    for policy in ("full", "dots"):
        model = STIVDiT(dataclasses.replace(config, remat_policy=policy))
        jax.ad_checkpoint.print_saved_residuals(lambda p, m=model: m.apply({"params": p}, **inputs).sum(), params)
        assert "named 'spatial_attention'" not in capsys.readouterr().out, policy


def test_causal_temporal_attention_sees_only_past_frames(base):
    config, params, inputs, _ = base
    run = forward(dataclasses.replace(config, causal_temporal=True))
    out = run(params, inputs)
    late = run(params, dict(inputs, latents=inputs["latents"].at[:, 3].add(1.0)))
    early = run(params, dict(inputs, latents=inputs["latents"].at[:, 0].add(1.0)))
    assert_close(late[:, :3], out[:, :3], ulps=64)                               # the future is invisible
    assert not np.allclose(early[:, 3], out[:, 3], atol=1e-4)                    # the past is seen


def test_full_3d_attention_mixes_frames_and_masks_with_3d_positions():
    config = make_config(attention_layout="full3d", temporal_patch=2)
    inputs = make_inputs()
    params = init_params(config, inputs)
    assert "temporal_attn" not in params["block_0"] and "full_attn" in params["block_0"]
    run = forward(config)
    out = run(params, inputs)
    assert_close(run(params, inputs, jax.random.key(5)), out, ulps=256)
    moved = run(params, dict(inputs, latents=inputs["latents"].at[:, 3].add(1.0)))
    assert not np.allclose(moved[:, 0], out[:, 0], atol=1e-4)


def test_every_parameter_has_logical_axis_names():
    config = make_config(adaln="per_block", temporal_adaln=True, scan_layers=True)
    boxed = jax.eval_shape(STIVDiT(config).init, jax.random.key(0), **make_inputs())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim and any(leaf.names), leaf.names
    names = {name for leaf in leaves for name in leaf.names}
    assert {"embed", "mlp", "heads", "head_dim", "layers"} <= names


def test_forward_sharded_over_fsdp_context_tensor_matches_unsharded(base):
    import ml_collections
    from stiv_jax.parallel import mesh as mesh_lib
    config, params, inputs, expected = base
    mesh_config = ml_collections.ConfigDict(dict(ici=dict(data=1, fsdp=2, context=2, tensor=2), logical_rules=()))
    mesh, rules = mesh_lib.build_mesh(mesh_config), mesh_lib.logical_rules(mesh_config)
    specs = nn.get_partition_spec(jax.eval_shape(STIVDiT(config).init, jax.random.key(0), **inputs)["params"])
    sharded = jax.device_put(params, mesh_lib.logical_to_sharding(specs, mesh, rules))
    assert tuple(sharded["block_0"]["ffn"]["wi"]["kernel"].sharding.spec) == ("fsdp", "tensor")
    with mesh_lib.activate(mesh, rules):
        out = forward(config)(sharded, inputs)
    assert_close(out, expected, ulps=256)   # every reduction split over fsdp x context x tensor


@pytest.mark.parametrize("scan_layers", [False, True])
def test_adaln_offsets_add_a_per_block_table_to_the_shared_modulation(base, scan_layers):
    """adaLN-single with per-block offsets (PixArt-alpha): zero tables give exactly the shared-AdaLN model; a table
    in one block changes the output (the blocks no longer see one modulation)."""
    config, params, inputs, expected = base
    cfg = dataclasses.replace(config, adaln="shared_offsets", scan_layers=scan_layers)
    shapes = nn.unbox(jax.eval_shape(STIVDiT(cfg).init, jax.random.key(1), **inputs)["params"])
    blocks = ["block_0", "block_1", "decoder_block_0"]
    with_offsets = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for name in blocks:
        with_offsets[name]["adaln_offsets"] = jnp.zeros((cfg.num_modulations, cfg.width))
    if scan_layers:
        with_offsets = stack_block_params(stack_block_params(with_offsets, name="block"), name="decoder_block")
        assert with_offsets["blocks"]["adaln_offsets"].shape == shapes["blocks"]["adaln_offsets"].shape
    else:
        assert shapes["block_0"]["adaln_offsets"].shape == (6, cfg.width)
    run = forward(cfg)
    assert_close(run(with_offsets, inputs), expected, ulps=256)
    table = 0.1 * jax.random.normal(jax.random.key(3), (cfg.num_modulations, cfg.width))
    if scan_layers:
        with_offsets["blocks"]["adaln_offsets"] = with_offsets["blocks"]["adaln_offsets"].at[1].set(table)
    else:
        with_offsets["block_1"]["adaln_offsets"] = table
    assert not np.allclose(run(with_offsets, inputs), expected, atol=1e-3)
