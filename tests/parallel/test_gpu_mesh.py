"""The multi-GPU mesh preset: FSDP over the GPUs of a host, data parallel over hosts."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from stiv_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class FakeGpu:
    id: int
    process_index: int


def test_hybrid_layout_puts_each_host_in_one_fsdp_row():
    devices = [FakeGpu(i, i // 8) for i in reversed(range(32))]        # 4 hosts x 8 GPUs, any order
    array = mesh_lib.hybrid_device_array(devices, (1, 8, 1, 1), (4, 1, 1, 1), lambda d: d.process_index)
    assert array.shape == (4, 8, 1, 1)
    for host in range(4):
        assert [d.process_index for d in array[host, :, 0, 0]] == [host] * 8
        assert [d.id for d in array[host, :, 0, 0]] == list(range(8 * host, 8 * host + 8))


def test_uneven_hosts_are_rejected_with_the_counts():
    devices = [FakeGpu(i, 0 if i < 5 else 1) for i in range(8)]
    with pytest.raises(ValueError, match=r"needs 2 granules of 4 devices; got \{0: 5, 1: 3\}"):
        mesh_lib.hybrid_device_array(devices, (1, 4, 1, 1), (2, 1, 1, 1), lambda d: d.process_index)


def test_gpu_preset_builds_data_over_hosts_and_fsdp_within_on_fake_devices():
    """8 CPU devices as 2 hosts of 4: the batch splits over both axes, a weight's shards stay within a host."""
    config = ml_collections.ConfigDict(dict(ici=dict(data=-1), dcn=dict(), rules="default",
                                            preset="gpu_fsdp_hosts"))
    devices = jax.devices()[:8]
    mesh = mesh_lib.build_mesh(config, devices, granule_of=lambda d: d.id // 4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
    assert [d.id // 4 for d in mesh.devices[0].ravel()] == [0] * 4
    rules = mesh_lib.logical_rules(config)
    assert dict(rules)["embed"] == "fsdp" and dict(rules)["mlp"] is None      # the fsdp preset's rules
    weight = jax.device_put(np.zeros((8, 16), np.float32), NamedSharding(mesh, PartitionSpec("fsdp", None)))
    for shard in weight.addressable_shards:   # rows split over a host's 4 GPUs, replicated over the 2 hosts
        assert shard.data.shape == (2, 16)
    hosts_of_rows = {}
    for shard in weight.addressable_shards:
        hosts_of_rows.setdefault(shard.index[0].start, set()).add(shard.device.id // 4)
    assert all(hosts == {0, 1} for hosts in hosts_of_rows.values())


def test_unknown_preset_and_granule_name_the_key():
    with pytest.raises(ValueError, match="config.mesh.preset='gpu'; valid: gpu_fsdp_hosts"):
        mesh_lib.build_mesh(ml_collections.ConfigDict(dict(ici=dict(data=-1), preset="gpu")), jax.devices()[:1])
    with pytest.raises(ValueError, match="config.mesh.dcn_granule='host'"):
        mesh_lib.build_mesh(ml_collections.ConfigDict(dict(ici=dict(data=-1), dcn_granule="host")),
                            jax.devices()[:1])
