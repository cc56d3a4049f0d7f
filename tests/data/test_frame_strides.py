"""Per-sample frame strides (``config.data.frame_strides``): one source trains several strides, each sample's stride
recorded in its micro-conditions and fps, clips too short for a stride never drawn at it; and the source-size
micro-conditions of resized clips."""
import numpy as np
import pytest

from conftest import demo_config
from stiv_jax.data import buckets, pipeline, schema, video_io
from stiv_jax.data.build_shards import write_shard
from stiv_jax.encoders.text_embedding import tokenize_bytes

LEVEL = 5   # frame t of a test clip is flat grey 5 t: a decoded sample's frame values name their source frames


def counting_clip(frames: int, *, key: str, source_size=None, width: int = 16) -> bytes:
    """A clip record whose frame t is grey level LEVEL * t, 16 x ``width`` pixels, 8 fps."""
    video = (np.arange(frames, dtype=np.uint8) * LEVEL)[:, None, None, None]
    video = np.ascontiguousarray(np.broadcast_to(video, (frames, 16, width, 3)))
    meta = dict(source=key, start_sec=0.0, end_sec=frames / 8, start_frame=0, scene_index=0, fps=8.0, width=width,
                height=16, num_frames=frames, duration=frames / 8, motion_score=float(LEVEL), keyint=8)
    if source_size:
        meta.update(source_height=source_size[0], source_width=source_size[1])
    return schema.encode_record(video=video_io.encode_mp4(video, fps=8, crf=0, keyint=8), caption=f"clip {key}",
                                meta=meta)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("strides")
    # 6 clips long enough for stride 7 (4 frames at stride 7 span 22 source frames), 6 that hold only stride 1.
    records = [counting_clip(24, key=f"long{i}") for i in range(6)] + [counting_clip(10, key=f"short{i}")
                                                                        for i in range(6)]
    write_shard(str(out / "clips-00000-of-00001.array_record"), records)
    return str(out)


def data_config(shards, **changes):
    data = demo_config(shards).data
    data.frames, data.frame_stride, data.resolution, data.batch_size = 4, 1, 16, 4
    data.num_threads, data.prefetch, data.random_crop = 1, 2, True
    for key, value in changes.items():
        data[key] = value
    return data


def test_each_sample_draws_its_stride_by_weight_among_those_its_clip_holds(shards):
    data = data_config(shards, frame_strides=((1, 0.5), (7, 0.5)))
    iterator = pipeline.make_iterator(data, seed=0, tokenize=lambda t: tokenize_bytes(t, 16))
    rows = []
    for _ in range(30):
        batch = next(iterator)
        for video, micro, fps in zip(batch["video"], batch["micro_conditions"], batch["fps"]):
            rows.append((video[:, 0, 0, 0].astype(float) / LEVEL, micro, fps))
    strides = np.array([m[4] for _, m, _ in rows])
    assert set(strides) == {1.0, 7.0}
    for levels, micro, fps in rows:
        # The decoded frames are the source frames start, start + s, ...: the micro-condition is the real stride.
        np.testing.assert_allclose(np.diff(levels), micro[4], atol=0.25)
        assert fps == pytest.approx(8.0 / micro[4])
        assert micro[5] == 4
    # Long clips draw stride 7 about half the time; short ones (10 frames < 22) never do.
    first = np.array([levels[0] for levels, _, _ in rows])
    span = np.array([levels[-1] - levels[0] for levels, _, _ in rows])
    assert np.all(span[strides == 7] == pytest.approx(21, abs=0.5)) and np.all(first[strides == 7] <= 2.5)
    share = np.mean(strides == 7)
    assert 0.15 < share < 0.4, share   # ~half of the long half of the clips


def test_without_frame_strides_every_sample_keeps_frame_stride(shards):
    batch = next(pipeline.make_iterator(data_config(shards, frame_stride=2), seed=0, tokenize=lambda t:
                                        tokenize_bytes(t, 16)))
    assert np.all(batch["micro_conditions"][:, 4] == 2)


@pytest.mark.parametrize("bad", [((0, 1.0),), ((2, -1.0),), ((2, 1.0), (2, 1.0)), ((3, 0.0),), ((1.5, 1.0),)])
def test_bad_frame_strides_name_the_key(bad):
    config = data_config("unused", frame_strides=bad)
    with pytest.raises(ValueError, match="config.data.frame_strides"):
        buckets.frame_strides(config)


def test_frame_strides_accepts_bare_strides_and_normalises_weights():
    assert buckets.frame_strides(data_config("unused", frame_strides=(1, 3))) == ((1, 0.5), (3, 0.5))
    assert buckets.frame_strides(data_config("unused", frame_strides=((1, 1.0), (19, 3.0)))) == ((1, 0.25),
                                                                                                (19, 0.75))


def test_micro_conditions_give_the_source_size_of_a_resized_clip(tmp_path):
    """A clip the shard builder stored at 16x32 from a 360x720 source: the original-size micro-conditions are the
    source's, and the crop offsets are scaled to source pixels (SDXL)."""
    path = str(tmp_path / "clips-00000-of-00001.array_record")
    write_shard(path, [counting_clip(8, key="resized", source_size=(360, 720), width=32)])
    batch = next(pipeline.make_iterator(data_config(str(tmp_path), resolution=8, random_crop=False), seed=0,
                                        tokenize=lambda t: tokenize_bytes(t, 16)))
    # Center square of the 16x32 stored clip: 16x16 from column 8, i.e. column 8 x 720 / 32 = 180 of the source.
    np.testing.assert_allclose(batch["micro_conditions"][0], [360, 720, 0, 180, 1, 4])


def test_long_video_stage_trains_key_frames_and_intervals_from_one_source(demo_shards):
    """experiments/long_video.py's data (runlocal sizes, real clips): the strides it mixes give the long task both
    modes in one run, and its key frames are exactly one interval apart."""
    import jax
    from experiments import long_video
    from stiv_jax.diffusion import tasks
    config = long_video.get_config("runlocal")
    with config.unlocked():
        config.data.shards, config.data.num_threads, config.data.prefetch = demo_shards, 1, 2
    gaps = config.data.frames - 1
    assert config.diffusion.long_keyframe_stride == gaps and tasks.long_interval_stride(
        keyframe_stride=gaps, frames=config.data.frames) == config.data.frame_stride == 1
    iterator = pipeline.make_iterator(config.data, seed=0, tokenize=lambda t: tokenize_bytes(t, 16))
    sampler = tasks.TaskSampler.from_config(config.diffusion, frames=config.data.frames)
    layouts = []
    for step in range(6):
        batch = next(iterator)
        cond = sampler(jax.random.key(step), len(batch["video"]), batch["micro_conditions"][:, 4])
        layouts += [tasks.LAYOUTS[i] for i in np.asarray(cond.layout)]
    assert {"long_keyframe", "long_interpolate"} <= set(layouts)
