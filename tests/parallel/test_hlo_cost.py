"""The HLO cost counter multiplies loop bodies by their trip counts; the roofline turns costs into step times."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from stiv_jax.parallel import hlo_cost
from stiv_jax.training import accelerators, roofline

SYNTHETIC = """HloModule synthetic, entry_computation_layout={(f32[4,8]{1,0}, f32[8,16]{1,0})->f32[4,16]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%body (p: (s32[], f32[4,8], f32[8,16], f32[1024])) -> (s32[], f32[4,8], f32[8,16], f32[1024]) {
  %p = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}, f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %a = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %b = f32[8,16]{1,0} get-tuple-element(%p), index=2
  %g = f32[1024]{0} get-tuple-element(%p), index=3
  %d = f32[4,16]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %r = f32[1024]{0} all-reduce(%g), channel_id=1, replica_groups=[2,4]<=[8], to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}, f32[1024]{0}) tuple(%next, %a, %b, %r)
}

%cond (q: (s32[], f32[4,8], f32[8,16], f32[1024])) -> pred[] {
  %q = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}, f32[1024]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

ENTRY %main (a0: f32[4,8], b0: f32[8,16]) -> f32[4,16] {
  %a0 = f32[4,8]{1,0} parameter(0)
  %b0 = f32[8,16]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %g0 = f32[1024]{0} broadcast(%zero), dimensions={}
  %init = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}, f32[1024]{0}) tuple(%zero, %a0, %b0, %g0)
  %w = (s32[], f32[4,8]{1,0}, f32[8,16]{1,0}, f32[1024]{0}) while(%init), condition=%cond, body=%body
  %ag = f32[32,16]{1,0} all-gather(%b0), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  ROOT %out = f32[4,16]{1,0} dot(%a0, %b0), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_synthetic_module_with_a_known_answer():
    cost = hlo_cost.analyze(SYNTHETIC, num_devices=8)
    assert cost.loops == [("w", 5)]                       # the bound of the condition (no known_trip_count)
    # 5 loop dots + 1 entry dot of [4,8] x [8,16]: 2 * 4 * 16 * 8 = 1024 FLOPs each.
    assert cost.flops == 6 * 1024
    # all-reduce of 4 KiB in groups of 4, 5 times: ring = 2 * (4-1)/4 of the tensor per device.
    assert cost.collective_bytes["all-reduce"] == 5 * 4096
    assert cost.wire_bytes["all-reduce"] == 5 * 2 * 4096 * 3 / 4
    # all-gather to 32x16 f32 (2 KiB) in groups of 4: (4-1)/4 of the gathered tensor.
    assert cost.wire_bytes["all-gather"] == 2048 * 3 / 4
    assert cost.collective_count == {"all-reduce": 5, "all-gather": 1}


def test_collectives_spanning_slices_are_booked_to_dcn():
    cost = hlo_cost.analyze(SYNTHETIC, num_devices=8, chips_per_slice=4)
    assert cost.dcn_wire_bytes == 0.0                     # groups {0..3}, {4..7}: each inside one slice
    spanning = SYNTHETIC.replace("replica_groups=[2,4]<=[8]", "replica_groups=[4,2]<=[2,4]T(1,0)")
    cost = hlo_cost.analyze(spanning, num_devices=8, chips_per_slice=4)
    assert hlo_cost.replica_groups("replica_groups=[4,2]<=[2,4]T(1,0)", 8)[0] == [0, 4]
    assert cost.dcn_wire_bytes == cost.wire_bytes["all-reduce"] == 5 * 2 * 4096 / 2


def test_replica_group_spellings():
    assert hlo_cost.replica_groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}", 8) == [
        [0, 1, 2, 3], [4, 5, 6, 7]]
    assert hlo_cost.replica_groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", 8)[0] == [0, 4]
    assert hlo_cost.replica_groups("replica_groups={{0,2},{1,3}}", 4) == [[0, 2], [1, 3]]
    assert hlo_cost.replica_groups("replica_groups={}", 4) == [[0, 1, 2, 3]]


def _mlp_train_hlo(*, scan: bool, layers: int = 3) -> str:
    """Forward + backward of a ``layers``-deep MLP with FSDP-sharded weights on 8 devices, scanned or unrolled."""
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    gathered = NamedSharding(mesh, PartitionSpec())

    def layer(x, w):
        return jnp.tanh(x @ jax.lax.with_sharding_constraint(w, gathered))

    def loss(w, x):
        if scan:
            x, _ = jax.lax.scan(lambda c, wi: (layer(c, wi), None), x, w)
        else:
            for i in range(layers):
                x = layer(x, w[i])
        return jnp.sum(x ** 2)

    w = jax.ShapeDtypeStruct((layers, 128, 128), jnp.float32,
                             sharding=NamedSharding(mesh, PartitionSpec(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("fsdp", None)))
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()


def test_a_scanned_model_and_its_unrolled_twin_count_the_same_bytes_and_flops():
    scanned = hlo_cost.analyze(_mlp_train_hlo(scan=True), num_devices=8)
    unrolled = hlo_cost.analyze(_mlp_train_hlo(scan=False), num_devices=8)
    assert scanned.loops and all(n == 3 for _, n in scanned.loops)
    assert not unrolled.loops
    # per device: batch 8 of 64; forward x @ w, backward dx and dw: 3 matmuls of 2 * 8 * 128 * 128 per layer.
    assert scanned.flops == unrolled.flops == 3 * 3 * 2 * 8 * 128 * 128
    assert scanned.wire_bytes == pytest.approx(unrolled.wire_bytes)
    # every layer's weight (64 KiB) is gathered at least once from its 8 shards
    assert scanned.collective_bytes["all-gather"] >= 3 * 128 * 128 * 4


def test_roofline_of_a_synthetic_cost():
    cost = hlo_cost.HloCost(flops=1e12, hbm_bytes=1e9, wire_bytes={"all-gather": 2e9})
    chip = accelerators.Chip("test", peak_tflops=100.0, hbm_gbps=1000.0, ici_gbps=400.0, dcn_gbps=10.0, source="")
    r = roofline.estimate(cost, chip, model_flops=0.5e12)
    assert (r.compute_s, r.memory_s, r.communication_s) == pytest.approx((0.01, 0.001, 0.01))
    assert r.overlapped_s == pytest.approx(0.01) and r.serial_s == pytest.approx(0.02)
    assert r.mfu() == pytest.approx(0.5) and r.mfu(r.serial_s) == pytest.approx(0.25)
    # half of the wire bytes over DCN at 10 GB/s: 0.1 s, plus 1e9 over ICI at 200 GB/s
    r = roofline.estimate(cost, chip, dcn_bytes=1e9)
    assert r.communication_s == pytest.approx(0.105) and r.bound == "communication"
    assert "model error +100%" in roofline.format_roofline(roofline.estimate(cost, chip), measured_s=0.005)


def test_roofline_cli_reads_a_saved_hlo(tmp_path, capsys):
    path = tmp_path / "step.hlo.txt"
    path.write_text(SYNTHETIC)
    assert roofline.main([f"--hlo={path}", "--chip=v5p", "--chips=8"]) == 0
    out = capsys.readouterr().out
    assert "roofline TPU v5p: compute" in out and "loops wx5" in out
    assert roofline.main([f"--hlo={path}", "--chip=tpu-v9", "--chips=8"]) == 2


def test_splash_attention_kernels_count_their_matmuls():
    q = "bf16[2,4,256,64]{3,2,1,0}"
    module = f"""HloModule k

ENTRY %main (q: {q}, k: {q}, v: {q}) -> {q} {{
  %q = {q} parameter(0)
  %k = {q} parameter(1)
  %v = {q} parameter(2)
  %splash_mha_fwd_residuals.1 = {q} custom-call(%q, %k, %v), custom_call_target="tpu_custom_call"
  ROOT %splash_mha_dkv_no_residuals.2 = {q} custom-call(%q, %k, %v), custom_call_target="tpu_custom_call"
}}
"""
    cost = hlo_cost.analyze(module)
    per_matmul = 2 * 2 * 4 * 256 * 256 * 64        # [256, 64] x [64, 256] per batch and head
    assert cost.flops == (2 + 4) * per_matmul and not cost.unknown_custom_calls
