"""Per-frame work of the video reader: crop, resize and convert a decoded frame on uint8, and tell which H.264
packets no other frame needs.

CPU time per 288x512 frame to a 256x256 crop, measured on a loaded 2-core host (``bench/data.py`` measures the
whole path): decode about 0.9 ms; FFmpeg's swscale resize + RGB of the whole frame 1.5 ms (``frame.reformat``);
RGB of the whole frame, crop, ``cv2.resize`` 0.35 ms; here, crop the YUV planes to the window, resize them with
OpenCV (bilinear on uint8) and convert only the result to RGB: 0.19 ms.
"""
from __future__ import annotations

import cv2
import numpy as np

# Decoded frames the fast path understands: 4:2:0 planar, limited range, BT.601 or unspecified matrix (what
# FFmpeg's own RGB conversion assumes for them, and what OpenCV's I420 conversion implements). Others (full
# range, BT.709-tagged, 4:2:2, RGB sources) go through FFmpeg's conversion first.
_FAST_FORMATS = ("yuv420p",)
_FAST_COLORSPACES = (2, 5, 6)   # AVCOL_SPC_UNSPECIFIED, BT470BG, SMPTE170M (both BT.601)
_FAST_RANGES = (0, 1)           # AVCOL_RANGE_UNSPECIFIED, MPEG (limited)


def crop_resize_rgb(frame, *, crop: tuple[int, int, int, int] | None = None,
                    size: tuple[int, int] | None = None, reformatter=None,
                    dst: np.ndarray | None = None) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as uint8 RGB ``[height, width, 3]``: crop first, then resize.

    Args:
      frame: the decoded frame.
      crop: optional ``(top, left, height, width)`` window in the frame's pixels (clipped to the frame).
      size: optional output ``(height, width)``; bilinear (area averaging when shrinking by 2x or more).
      reformatter: an ``av.video.reformatter.VideoReformatter`` reused across the frames of a video (keeps its
        swscale context) for frames the YUV path does not take; None: a new one per frame.
      dst: optional uint8 ``[out_h, out_w, 3]`` C-contiguous array written in place and returned (no copy).
    """
    top, left, height, width = _window(frame.height, frame.width, crop)
    out_h, out_w = size if size is not None else (height, width)
    if _fast(frame) and not (top % 2 or left % 2 or height % 2 or width % 2 or out_h % 2 or out_w % 2):
        return _yuv420_crop_resize(frame, top, left, height, width, out_h, out_w, dst)
    if reformatter is not None:
        frame = reformatter.reformat(frame, format="rgb24")
    rgb = frame.to_ndarray(format="rgb24")[top:top + height, left:left + width]
    return _resize(rgb, out_h, out_w, dst)


def _window(frame_h: int, frame_w: int, crop) -> tuple[int, int, int, int]:
    if crop is None:
        return 0, 0, frame_h, frame_w
    top, left = max(0, int(crop[0])), max(0, int(crop[1]))
    height, width = min(int(crop[2]), frame_h - top), min(int(crop[3]), frame_w - left)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop {tuple(crop)} lies outside the {frame_h}x{frame_w} frame")
    return top, left, height, width


def _fast(frame) -> bool:
    return (frame.format.name in _FAST_FORMATS and int(frame.colorspace) in _FAST_COLORSPACES
            and int(frame.color_range) in _FAST_RANGES)


def _resize(image: np.ndarray, out_h: int, out_w: int, dst: np.ndarray | None = None) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        if dst is None:
            return np.ascontiguousarray(image)
        dst[...] = image
        return dst
    # INTER_AREA averages every source pixel (no aliasing) but costs 2-3x INTER_LINEAR at non-integer factors;
    # below a 2x shrink bilinear reads every source pixel anyway.
    interpolation = cv2.INTER_AREA if out_h * 2 <= h and out_w * 2 <= w else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), dst=dst, interpolation=interpolation)


def _plane(frame, index: int, height: int, width: int) -> np.ndarray:
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8, count=plane.line_size * height).reshape(height, plane.line_size)
    return rows[:, :width]


def _yuv420_crop_resize(frame, top, left, height, width, out_h, out_w, dst=None) -> np.ndarray:
    """Crops and resizes the Y, U and V planes (zero-copy views of the decoder's buffers) into one I420 buffer
    of the output size, then converts that to RGB."""
    i420 = np.empty((out_h * 3 // 2, out_w), np.uint8)
    flat = i420.reshape(-1)
    luma = _plane(frame, 0, frame.height, frame.width)[top:top + height, left:left + width]
    _resize(luma, out_h, out_w, dst=i420[:out_h])
    quarter = (out_h // 2) * (out_w // 2)
    for k in (1, 2):
        chroma = _plane(frame, k, (frame.height + 1) // 2, (frame.width + 1) // 2)
        chroma = chroma[top // 2:(top + height) // 2, left // 2:(left + width) // 2]
        start = out_h * out_w + (k - 1) * quarter
        _resize(chroma, out_h // 2, out_w // 2, dst=flat[start:start + quarter].reshape(out_h // 2, out_w // 2))
    if dst is None:
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420, dst=dst)
    return dst


def avc_nal_length_size(codec_context) -> int:
    """Bytes of the NAL length prefix of an H.264 stream in MP4/MOV form (avcC extradata), else 0 (Annex B
    streams or other codecs: packets are then never skipped)."""
    extradata = codec_context.extradata
    if codec_context.name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return 0
    return (extradata[4] & 3) + 1


def is_non_reference(packet: bytes, nal_length: int) -> bool:
    """Whether an H.264 access unit (length-prefixed NAL units) holds a picture no other picture refers to:
    its first slice has ``nal_ref_idc == 0`` (H.264 7.4.1). A malformed packet counts as a reference (decoded)."""
    position = 0
    while position + nal_length < len(packet):
        size = int.from_bytes(packet[position:position + nal_length], "big")
        header = packet[position + nal_length]
        if header & 0x1F in (1, 5):   # coded slice of a non-IDR / IDR picture
            return (header >> 5) & 3 == 0
        if size <= 0:
            return False
        position += nal_length + size
    return False
