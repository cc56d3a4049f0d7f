"""Decode and encode videos with PyAV (bundled FFmpeg; no system ffmpeg needed)."""
from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
from PIL import Image


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
                  size: tuple[int, int] | None = None, threads: int = 0) -> np.ndarray:
    """Decodes frames ``start_frame, start_frame + stride, ...`` as uint8 ``[frames, height, width, 3]``.

    Seeks to the keyframe at or before ``start_frame`` (when the stream has timestamps) and stops decoding once
    ``num_frames`` frames are kept, so only the frames a clip needs are decoded.

    Args:
      source: a file path or the encoded bytes.
      start_frame: first frame index to keep.
      num_frames: how many frames to keep (None: until the end).
      stride: keep one of every ``stride`` frames.
      size: optional ``(height, width)`` to resize to (bilinear, FFmpeg's scaler).
      threads: FFmpeg decoder threads (0: FFmpeg picks; 1 for one core per worker process).

    Raises:
      VideoDecodeError: the video is corrupt, truncated or has fewer frames than requested.
    """
    frames = []
    try:
        with av.open(_as_file(source)) as container:
            stream = container.streams.video[0]
            if threads == 1:
                stream.thread_type, stream.thread_count = "NONE", 1
            else:
                stream.thread_type, stream.thread_count = "AUTO", threads
            index_of = _seek(container, stream, start_frame)
            for position, frame in enumerate(container.decode(stream)):
                index = index_of(frame, position)
                if index < start_frame or (index - start_frame) % stride:
                    continue
                frames.append(_to_rgb(frame, size))
                if num_frames is not None and len(frames) == num_frames:
                    break
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise VideoDecodeError(f"cannot decode video {_name(source)}: {e}") from e
    if not frames or (num_frames is not None and len(frames) < num_frames):
        raise VideoDecodeError(
            f"video {_name(source)} gave {len(frames)} frames from frame {start_frame} at stride {stride}, "
            f"{num_frames} needed")
    return np.stack(frames)


def iter_frames(source, *, size: tuple[int, int] | None = None, pixel_format: str = "rgb24"):
    """Yields every frame as uint8 ``[height, width, 3]`` (``size`` = optional ``(height, width)``).

    Raises ``VideoDecodeError`` when the container or a packet is corrupt (after yielding the good frames).
    """
    try:
        with av.open(_as_file(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is not None:
                    frame = frame.reformat(width=size[1], height=size[0], format=pixel_format)
                yield frame.to_ndarray(format=pixel_format)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise VideoDecodeError(f"cannot decode video {_name(source)}: {e}") from e


def _to_rgb(frame, size):
    if size is not None:
        frame = frame.reformat(width=size[1], height=size[0], format="rgb24")
    return frame.to_ndarray(format="rgb24")


def _seek(container, stream, start_frame: int):
    """Seeks near ``start_frame``; returns ``index_of(frame, position)`` giving each decoded frame's index."""
    rate = stream.average_rate or stream.guessed_rate
    time_base = stream.time_base
    first_pts = stream.start_time or 0
    if start_frame <= 0 or not rate or time_base is None:
        return lambda frame, position: position

    def from_pts(frame, position):
        if frame.pts is None:
            raise ValueError("frame without timestamp after a seek")
        return int(round(float((frame.pts - first_pts) * time_base * rate)))

    # Aim half a frame early so rounding never skips the keyframe that holds start_frame.
    target = first_pts + int((start_frame - 0.5) / (rate * time_base))
    container.seek(max(first_pts, target), stream=stream, backward=True, any_frame=False)
    return from_pts


# x264 settings that make an encode a pure function of its frames, so a dataset build is reproducible byte for
# byte (whatever the worker count, the load, or the number of cores):
# - mbtree=0: x264's macroblock-tree rate control gave a different bitstream in different processes for the same
#   frames (measured here: 5 concurrent encodes of one 16-frame clip, 5 different files; with mbtree=0, 5 equal),
#   with threads pinned to 1 too. Its cost is a few percent more bits at the same CRF.
# - threads=1: x264's output depends on its frame-thread count, which it derives from the machine's core count.
#   Builders parallelise over videos (one process per worker) instead.
X264_DETERMINISTIC = "mbtree=0:threads=1:lookahead-threads=1"


def encode_mp4(frames: np.ndarray, *, fps: float, path: str | None = None, crf: int = 18) -> bytes:
    """Encodes uint8 ``[frames, height, width, 3]`` as H.264 mp4 (yuv420p). Writes ``path`` if given.

    Deterministic: the same frames give the same bytes in any process (``X264_DETERMINISTIC``). Odd sizes are
    padded to even by edge replication (yuv420p needs even dimensions).
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
        stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": X264_DETERMINISTIC}
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
