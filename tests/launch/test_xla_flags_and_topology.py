"""Per-generation libtpu flag sets and TPU host counts."""
import pytest

from stiv_jax.launch import topology, xla_flags


@pytest.mark.parametrize("accelerator,generation", [
    ("v4-32", "v4"), ("v5litepod-256", "v5e"), ("v5e-16", "v5e"), ("v5p-256", "v5p"), ("v6e-256", "v6e")])
def test_accelerator_types_map_to_their_generation_flag_set(accelerator, generation):
    assert xla_flags.tpu_generation(accelerator) == generation
    assert xla_flags.libtpu_init_args(accelerator).split() == list(xla_flags.TPU_FLAGS[generation])


def test_every_set_overlaps_all_gathers_and_has_no_duplicate_or_malformed_flag():
    for generation, flags in xla_flags.TPU_FLAGS.items():
        assert len(set(flags)) == len(flags), generation
        assert all(f.startswith("--xla_") and f.count("=") == 1 for f in flags), generation
        assert "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true" in flags


def test_multi_slice_adds_the_dcn_data_parallel_flags_once():
    dcn = "--xla_tpu_enable_data_parallel_all_reduce_opt=true"
    assert dcn not in xla_flags.libtpu_init_args("v6e-256")
    multi = xla_flags.libtpu_init_args("v6e-256", num_slices=2).split()
    assert multi.count(dcn) == 1
    assert xla_flags.libtpu_init_args("v5p-256", num_slices=4).split().count(dcn) == 1


def test_v6e_raises_scoped_vmem_and_v5p_pipelines_backward_all_gathers():
    assert "--xla_tpu_scoped_vmem_limit_kib=98304" in xla_flags.TPU_FLAGS["v6e"]
    assert "--xla_tpu_enable_ag_backward_pipelining=true" in xla_flags.TPU_FLAGS["v5p"]


def test_cli_prints_env_lines(capsys):
    assert xla_flags.main(["--accelerator=gpu", "--format=env"]) == 0
    assert capsys.readouterr().out.strip() == "XLA_FLAGS=" + " ".join(xla_flags.GPU_XLA_FLAGS)
    assert xla_flags.main(["--accelerator=tpu-v5"]) == 2
    assert "unknown TPU accelerator type 'tpu-v5'" in capsys.readouterr().err


def test_gpu_set_overlaps_combines_and_pipelines_collectives_and_can_be_switched_off(capsys):
    flags = xla_flags.GPU_XLA_FLAGS
    for name in ("latency_hiding_scheduler", "all_gather_combine_threshold_bytes", "pipelined_all_gather",
                 "enable_command_buffer"):
        assert any(name in f for f in flags), name
    assert len({f.split("=")[0] for f in flags}) == len(flags)
    merged = xla_flags.gpu_xla_flags(base="--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d")
    assert merged.split().count("--xla_gpu_enable_latency_hiding_scheduler=true") == 1
    assert "--xla_gpu_enable_latency_hiding_scheduler=false" not in merged and "--xla_dump_to=/tmp/d" in merged
    assert xla_flags.gpu_xla_flags(enabled=False, base="--xla_dump_to=/tmp/d") == "--xla_dump_to=/tmp/d"
    assert xla_flags.main(["--accelerator=gpu", "--gpu_flags=off", "--format=env"]) == 0
    assert capsys.readouterr().out.strip() == "XLA_FLAGS="


def test_xla_parses_every_gpu_flag():
    """XLA reads XLA_FLAGS on any backend and aborts on an unknown flag or value, so the CPU checks the set."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS=xla_flags.gpu_xla_flags(), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", "import jax; print(jax.numpy.ones(3).sum())"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "3.0", result.stderr[-2000:]
    env["XLA_FLAGS"] = "--xla_gpu_enable_command_buffer=NOT_A_COMMAND"      # the check can fail
    assert subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(3).sum()"], env=env,
                          capture_output=True, text=True, timeout=300).returncode != 0


@pytest.mark.parametrize("accelerator,slices,hosts", [
    ("v5p-8", 1, 1), ("v5p-256", 1, 32), ("v5p-256", 2, 64), ("v4-8", 1, 1), ("v4-32", 1, 4),
    ("v5litepod-8", 1, 1), ("v5litepod-16", 1, 4), ("v5litepod-256", 2, 128), ("v6e-256", 1, 64)])
def test_host_counts_match_4_chip_vms(accelerator, slices, hosts):
    assert topology.num_processes(accelerator, slices) == hosts


def test_impossible_sizes_are_rejected():
    with pytest.raises(ValueError, match="v5p-100: 50 chips do not fill 4-chip hosts"):
        topology.hosts_per_slice("v5p-100")
    with pytest.raises(ValueError, match="num_slices must be >= 1"):
        topology.num_processes("v5p-8", 0)


LIBTPU_CHECK = """
import sys
from jax.experimental import topologies
topo = topologies.get_topology_desc(platform="tpu", topology_name=sys.argv[1], chip_config_name="default",
                                    chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(True, True, True))
print("devices", len(topo.devices), topo.devices[0].device_kind)
"""


@pytest.mark.parametrize("accelerator,topology_name", [
    ("v4-32", "v4:2x2x1"), ("v5litepod-256", "v5e:2x2"), ("v5p-256", "v5p:2x2x1"), ("v6e-256", "v6e:2x2")])
def test_the_pinned_libtpu_accepts_every_flag(accelerator, topology_name):
    """libtpu parses LIBTPU_INIT_ARGS when it starts and rejects unknown flags ("Unknown command line flag")."""
    import os
    import subprocess
    import sys
    pytest.importorskip("libtpu", reason="libtpu comes with the `tpu` extra (jax[tpu]); pip install -e .[tpu]")
    flags = xla_flags.libtpu_init_args(accelerator, num_slices=2)  # the multi-slice set contains the single one
    env = dict(os.environ, LIBTPU_INIT_ARGS=flags, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1",
               TPU_WORKER_HOSTNAMES="localhost")
    result = subprocess.run([sys.executable, "-c", LIBTPU_CHECK, topology_name], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "Unknown command line flag" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0 and result.stdout.startswith("devices "), result.stderr[-2000:]
