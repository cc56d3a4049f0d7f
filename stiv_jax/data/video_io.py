"""Decode and encode videos with PyAV (bundled FFmpeg; no system ffmpeg needed)."""
from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from stiv_jax.data import frames as frame_lib


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded (corrupt, truncated, unsupported)."""


def probe(source) -> dict:
    """Metadata of a video file path or bytes: fps, width, height, num_frames (estimate), duration (s)."""
    try:
        with av.open(_as_file(source)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            duration = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / av.time_base if container.duration else 0.0)
            frames = stream.frames or int(round(duration * fps))
            return dict(fps=fps, width=stream.codec_context.width, height=stream.codec_context.height,
                        num_frames=int(frames), duration=duration)
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise VideoDecodeError(f"cannot probe video {_name(source)}: {e}") from e


def decode_frames(source, *, start_frame: int = 0, num_frames: int | None = None, stride: int = 1,
                  size: tuple[int, int] | None = None, crop: tuple[int, int, int, int] | None = None,
                  threads: int = 0) -> np.ndarray:
    """Decodes frames ``start_frame, start_frame + stride, ...`` as uint8 ``[frames, height, width, 3]``.

    Decodes as little as H.264 allows: seeks to the keyframe at or before ``start_frame`` (shards are written
    with a fixed keyframe interval, clip meta ``keyint``), never decodes a frame that is neither kept nor a
    reference of other frames (an unwanted non-reference picture, told by its NAL header, is dropped before the
    decoder), and stops once ``num_frames`` frames are kept. Kept frames are cropped before they are resized and
    converted to RGB (``frames.crop_resize_rgb``).

    Args:
      source: a file path or the encoded bytes.
      start_frame: first frame index to keep.
      num_frames: how many frames to keep (None: until the end).
      stride: keep one of every ``stride`` frames.
      size: optional ``(height, width)`` of the output (bilinear on uint8, OpenCV).
      crop: optional ``(top, left, height, width)`` in source pixels, taken before the resize.
      threads: FFmpeg decoder threads (0: FFmpeg picks; 1 for one core per worker process).

    Raises:
      VideoDecodeError: the video is corrupt, truncated or has fewer frames than requested.
    """
    frames, reformatter = [], VideoReformatter()
    # A known output shape (frame count and size): every frame is written in place, no stack; otherwise (frames
    # of a stream whose size may change) they are stacked at the end.
    video = None if num_frames is None or size is None else np.empty((num_frames, *size, 3), np.uint8)
    try:
        for frame in iter_wanted_frames(source, start_frame=start_frame, num_frames=num_frames, stride=stride,
                                        threads=threads):
            dst = None if video is None else video[len(frames)]
            frames.append(frame_lib.crop_resize_rgb(frame, crop=crop, size=size, reformatter=reformatter, dst=dst))
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise VideoDecodeError(f"cannot decode video {_name(source)}: {e}") from e
    if not frames or (num_frames is not None and len(frames) < num_frames):
        raise VideoDecodeError(
            f"video {_name(source)} gave {len(frames)} frames from frame {start_frame} at stride {stride}, "
            f"{num_frames} needed")
    return video if video is not None else np.stack(frames)


def iter_wanted_frames(source, *, start_frame: int = 0, num_frames: int | None = None, stride: int = 1,
                       threads: int = 0):
    """Yields the decoded ``av.VideoFrame`` of frames ``start_frame, start_frame + stride, ...`` (at most
    ``num_frames``), decoding only what they need (see ``decode_frames``); raises FFmpeg's errors."""
    with av.open(_as_file(source)) as container:
        stream = container.streams.video[0]
        if threads == 1:
            stream.thread_type, stream.thread_count = "NONE", 1
        else:
            stream.thread_type, stream.thread_count = "AUTO", threads
        index_of = _seek(container, stream, start_frame)
        kept = 0
        for frame in _decode_wanted(container, stream, index_of, _wanted(start_frame, num_frames, stride)):
            yield frame
            kept += 1
            if num_frames is not None and kept == num_frames:
                return


def _wanted(start_frame: int, num_frames: int | None, stride: int):
    last = None if num_frames is None else start_frame + (num_frames - 1) * stride
    return lambda i: i >= start_frame and (i - start_frame) % stride == 0 and (last is None or i <= last)


def _decode_wanted(container, stream, index_of, wanted):
    """Yields the decoded frames whose index is ``wanted``, skipping the packets of unwanted non-reference
    pictures (no other frame needs them)."""
    nal_length = frame_lib.avc_nal_length_size(stream.codec_context)
    position = 0
    for packet in container.demux(stream):
        if (nal_length and packet.size and packet.pts is not None and index_of.by_pts is not None
                and not wanted(index_of.by_pts(packet.pts))
                and frame_lib.is_non_reference(bytes(packet), nal_length)):
            continue
        for frame in packet.decode():
            index = index_of(frame, position)
            position += 1
            if wanted(index):
                yield frame


def iter_frames(source, *, size: tuple[int, int] | None = None, pixel_format: str = "rgb24"):
    """Yields every frame as uint8 ``[height, width, 3]`` (``size`` = optional ``(height, width)``).

    Raises ``VideoDecodeError`` when the container or a packet is corrupt (after yielding the good frames).
    """
    try:
        with av.open(_as_file(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            reformatter = VideoReformatter()   # one swscale context for the whole video
            for frame in container.decode(stream):
                if size is not None:
                    frame = reformatter.reformat(frame, width=size[1], height=size[0], format=pixel_format)
                yield frame.to_ndarray(format=pixel_format)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise VideoDecodeError(f"cannot decode video {_name(source)}: {e}") from e


class _FrameIndex:
    """``index(frame, position)``: a decoded frame's index in the stream, from its timestamp when the stream has
    them (``by_pts``, also applied to packets), else from its decode position."""

    def __init__(self, stream):
        rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
        first_pts = stream.start_time or 0
        self.by_pts = None
        if rate and time_base is not None:
            # Frames per timestamp tick as a float: Fraction arithmetic per packet cost ~3 ms per 40-frame clip;
            # a double is exact to well under half a frame for any timestamp a video holds (< 2**50 ticks).
            frames_per_tick = float(time_base * rate)
            self.by_pts = lambda pts: int(round((pts - first_pts) * frames_per_tick))
        self.first_pts, self.rate, self.time_base, self.seeked = first_pts, rate, time_base, False

    def __call__(self, frame, position: int) -> int:
        if self.by_pts is not None and frame.pts is not None:
            return self.by_pts(frame.pts)
        if self.seeked:
            raise ValueError("frame without timestamp after a seek")
        return position


def _seek(container, stream, start_frame: int) -> _FrameIndex:
    """Seeks to the keyframe at or before ``start_frame``; returns the stream's ``_FrameIndex``."""
    index = _FrameIndex(stream)
    if start_frame <= 0 or index.by_pts is None:
        return index
    # Aim half a frame early so rounding never skips the keyframe that holds start_frame.
    target = index.first_pts + int((start_frame - 0.5) / (index.rate * index.time_base))
    container.seek(max(index.first_pts, target), stream=stream, backward=True, any_frame=False)
    index.seeked = True
    return index


# x264 settings that make an encode a pure function of its frames, so a dataset build is reproducible byte for
# byte (whatever the worker count, the load, or the number of cores):
# - mbtree=0: x264's macroblock-tree rate control gave a different bitstream in different processes for the same
#   frames (measured here: 5 concurrent encodes of one 16-frame clip, 5 different files; with mbtree=0, 5 equal),
#   with threads pinned to 1 too. Its cost is a few percent more bits at the same CRF.
# - threads=1: x264's output depends on its frame-thread count, which it derives from the machine's core count.
#   Builders parallelise over videos (one process per worker) instead.
X264_DETERMINISTIC = "mbtree=0:threads=1:lookahead-threads=1"


def encode_mp4(frames: np.ndarray, *, fps: float, path: str | None = None, crf: int = 18,
               keyint: int | None = None) -> bytes:
    """Encodes uint8 ``[frames, height, width, 3]`` as H.264 mp4 (yuv420p). Writes ``path`` if given.

    Deterministic: the same frames give the same bytes in any process (``X264_DETERMINISTIC``). Odd sizes are
    padded to even by edge replication (yuv420p needs even dimensions). ``keyint``: a keyframe exactly every
    ``keyint`` frames (no scene-cut keyframes), so a reader seeking to frame ``s`` decodes at most ``keyint - 1``
    frames before it; None: x264's default (one keyframe for a short clip).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [frames, height, width, 3], got {frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        params = X264_DETERMINISTIC
        if keyint is not None:
            if keyint < 1:
                raise ValueError(f"keyint={keyint} must be >= 1")
            params += f":keyint={keyint}:min-keyint={keyint}:scenecut=0"
        stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": params}
        stream.codec_context.thread_count, stream.codec_context.thread_type = 1, "NONE"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = buffer.getvalue()
    if path is not None:
        _atomic_write(path, data)
    return data


def write_gif(frames: np.ndarray, path: str, *, fps: float) -> None:
    """Writes uint8 ``[frames, height, width, 3]`` as a looping GIF."""
    images = [Image.fromarray(f) for f in np.asarray(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, int(round(1000 / fps))), loop=0)
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _as_file(source):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source


def _name(source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
