"""Device mesh construction and logical-axis sharding.

Mesh axes follow MaxText: ``('data', 'fsdp', 'context', 'tensor')``, ordered from the least to the most
communication-intensive. Model code never names mesh axes: parameters and activations carry *logical* names
(``embed``, ``mlp``, ``activation_batch`` ...) and the rules in ``config.mesh.logical_rules`` map them to mesh axes.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stiv_jax.parallel.rules import preset_rules

MESH_AXES = ("data", "fsdp", "context", "tensor")


def resolve_axis_sizes(sizes: dict[str, int], num_devices: int, *, what: str) -> tuple[int, ...]:
    """Fills the single ``-1`` entry of ``sizes`` so that the product equals ``num_devices``.

    Args:
      sizes: mesh axis name -> size; at most one may be -1.
      num_devices: devices to cover.
      what: name of the config field, used in errors.

    Returns:
      Sizes in ``MESH_AXES`` order.
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"{what}: unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}")
    values = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    auto = [i for i, v in enumerate(values) if v == -1]
    if len(auto) > 1:
        raise ValueError(f"{what}: only one axis may be -1, got {dict(zip(MESH_AXES, values))}")
    known = math.prod(v for v in values if v != -1)
    if auto:
        if num_devices % known:
            raise ValueError(f"{what}: {num_devices} devices are not divisible by the fixed axes product {known}")
        values[auto[0]] = num_devices // known
    if math.prod(values) != num_devices:
        raise ValueError(
            f"{what}: mesh {dict(zip(MESH_AXES, values))} covers {math.prod(values)} devices, "
            f"but {num_devices} are present; set one axis to -1 to fill automatically")
    return tuple(values)


# What the ``dcn`` axes of ``config.mesh`` split over: TPU slices (joined by the data-center network) or
# processes (GPU hosts, joined by InfiniBand / Ethernet); ``config.mesh.dcn_granule`` picks one.
GRANULES = ("slice", "process")

# Named layouts (``config.mesh.preset``): their keys override ``config.mesh``.
MESH_PRESETS = {
    # Multi-GPU: FSDP over the GPUs of a host (NVLink), data parallel over hosts; weights and optimizer state
    # sharded within a host only, so only the gradient all-reduce of the data axis crosses the network.
    "gpu_fsdp_hosts": dict(ici=dict(data=1, fsdp=-1, context=1, tensor=1), dcn=dict(data=-1),
                           dcn_granule="process", rules="fsdp"),
}


def with_preset(mesh_config) -> dict:
    """``config.mesh`` as a dict, the keys of its ``preset`` (if set) written over it; the error lists presets."""
    values = dict(mesh_config.items()) if hasattr(mesh_config, "items") else dict(mesh_config)
    # ``.get`` here and in build_mesh / logical_rules: library callers pass partial mesh sections (eval/i3d.py's
    # one-axis mesh gives ``ici`` alone; tests give ``rules`` alone), not only a run's full config.mesh.
    name = values.get("preset", "") or ""
    if name:
        if name not in MESH_PRESETS:
            raise ValueError(f"config.mesh.preset={name!r}; valid: {', '.join(sorted(MESH_PRESETS))} or ''")
        values.update(MESH_PRESETS[name])
    return values


def hybrid_device_array(devices: Sequence[Any], ici_shape: Sequence[int], dcn_shape: Sequence[int],
                        granule_of) -> np.ndarray:
    """Devices laid out as ``dcn_shape x ici_shape`` per axis: every ici block holds the devices of one granule.

    ``granule_of(device)`` is the device's slice or process; granules are taken in sorted order, their devices in
    id order. Returns an array of shape ``[dcn[i] * ici[i] for each axis]`` (dcn outer).
    """
    groups: dict[int, list] = {}
    for d in devices:
        groups.setdefault(granule_of(d), []).append(d)
    per_granule = math.prod(ici_shape)
    if len(groups) != math.prod(dcn_shape) or any(len(g) != per_granule for g in groups.values()):
        raise ValueError(f"config.mesh: dcn {tuple(dcn_shape)} x ici {tuple(ici_shape)} needs "
                         f"{math.prod(dcn_shape)} granules of {per_granule} devices; got "
                         f"{ {k: len(v) for k, v in sorted(groups.items())} }")
    blocks = np.empty((len(groups), per_granule), dtype=object)
    for row, key in enumerate(sorted(groups)):
        blocks[row, :] = sorted(groups[key], key=lambda d: d.id)
    arr = blocks.reshape(tuple(dcn_shape) + tuple(ici_shape))
    n = len(ici_shape)
    arr = arr.transpose([i for pair in zip(range(n), range(n, 2 * n)) for i in pair])
    return arr.reshape([a * b for a, b in zip(dcn_shape, ici_shape)])


def build_mesh(mesh_config, devices: Sequence[jax.Device] | None = None, *, granule_of=None) -> Mesh:
    """Builds the device mesh from ``config.mesh`` (``ici`` sizes, optional ``dcn`` sizes for multi-slice, or
    for multi-host GPUs with ``dcn_granule='process'``, or the named ``preset``).

    Axes are ``Auto`` (GSPMD-style propagation from our annotations); jax 0.10 defaults to Explicit axes,
    which the models' logical-axis annotations (``with_logical_constraint``) do not support. ``granule_of``
    overrides how a device's process is read (tests split one process's fake devices into hosts).
    """
    devices = list(devices if devices is not None else jax.devices())
    mesh_config = with_preset(mesh_config)
    granule = mesh_config.get("dcn_granule", "slice") or "slice"
    if granule not in GRANULES:
        raise ValueError(f"config.mesh.dcn_granule={granule!r}; valid: {GRANULES}")
    if granule == "process":
        granule_of = granule_of or (lambda d: d.process_index)
        dcn = dict(mesh_config.get("dcn", {}) or {})
        hosts = len({granule_of(d) for d in devices})
        dcn_shape = resolve_axis_sizes(dcn, hosts, what="config.mesh.dcn")
        ici_shape = resolve_axis_sizes(dict(mesh_config["ici"]), len(devices) // hosts, what="config.mesh.ici")
        array = hybrid_device_array(devices, ici_shape, dcn_shape, granule_of)
        return Mesh(array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
    dcn = dict(mesh_config.get("dcn", {}) or {})
    num_slices = max(1, len({getattr(d, "slice_index", 0) for d in devices}))
    dcn_shape = resolve_axis_sizes(dcn, num_slices, what="config.mesh.dcn") if dcn or num_slices > 1 else (1,) * 4
    ici_shape = resolve_axis_sizes(dict(mesh_config["ici"]), len(devices) // math.prod(dcn_shape), what="config.mesh.ici")
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if math.prod(dcn_shape) > 1:
        from jax.experimental import mesh_utils
        try:
            device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            # An axis that is no product of physical torus axes (e.g. context=2 on a 16x16 v5e slice).
            device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                                                allow_split_physical_axes=True)
    else:
        try:
            from jax.experimental import mesh_utils
            device_array = mesh_utils.create_device_mesh(ici_shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            device_array = np.asarray(devices).reshape(ici_shape)
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def logical_rules(mesh_config) -> tuple[tuple[str, Any], ...]:
    """The logical -> mesh axis rules: explicit ``config.mesh.logical_rules`` pairs if given, else the preset
    named by ``config.mesh.rules`` (see ``stiv_jax.parallel.rules``), else ``DEFAULT_LOGICAL_RULES``."""
    mesh_config = with_preset(mesh_config)
    rules = mesh_config.get("logical_rules", None) or preset_rules(mesh_config.get("rules", None) or "default")
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
    """Makes ``mesh`` and the logical ``rules`` current for model construction, jit and constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_to_sharding(logical_spec_tree, mesh: Mesh, rules) -> Any:
    """Maps a pytree of logical ``PartitionSpec``s to ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)


# Trace-time log of activation constraints, a list while ``record_activation_shardings`` is active. A context
# variable, not a module global: concurrent traces (threads) keep their own logs.
_ACTIVATION_LOG: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("activation_log", default=None)


@contextlib.contextmanager
def record_activation_shardings():
    """Collects one line per ``shard_logical`` call traced inside the block (for ``config.mesh.debug_sharding``)."""
    log: list[str] = []
    token = _ACTIVATION_LOG.set(log)
    try:
        yield log
    finally:
        _ACTIVATION_LOG.reset(token)


def _current_module_path() -> str:
    """The Flax module path being traced, for the debug log. Flax Linen has no public accessor for the module
    whose method is running, so this reads its module stack; it is only called while the log is recording."""
    stack = nn.module._context.module_stack
    module = stack[-1] if stack else None
    return "/".join(module.scope.path) if module is not None and module.scope is not None else "-"


def shard_logical(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains activation ``x`` to the sharding its logical axis ``names`` map to (no-op without a mesh)."""
    log = _ACTIVATION_LOG.get()
    if log is not None:
        physical = nn.logical_to_mesh_axes(tuple(names))
        log.append(f"activation {_current_module_path():50s} {str(tuple(x.shape)):22s} logical={tuple(names)} "
                   f"physical={tuple(physical)}")
    return nn.with_logical_constraint(x, PartitionSpec(*names))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding for a host batch array of rank ``ndim``: leading axis over the batch axes, rest replicated."""
    spec = nn.logical_to_mesh_axes(("activation_batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def host_to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
    """Turns this host's slice of the batch (numpy) into global ``jax.Array``s sharded over the batch axes."""
    def to_global(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, rules, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return jax.tree.map(to_global, batch)


def fetch_global(x) -> np.ndarray:
    """The whole value of ``x`` as numpy on this process, also when it is sharded over other processes' devices
    (an all-gather across processes: every process must call it)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
