"""Camera message conversion: encodings, row padding, JPEG/PNG, bounds, cv_bridge equivalence."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from prune2drive_ros.ros import image_codec
from prune2drive_ros.ros.image_codec import (
    HAVE_CV_BRIDGE,
    ImageDecodeError,
    decode,
    decode_compressed,
    decode_raw,
    image_size,
    jpeg_size,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def raw_msg(pixels: np.ndarray, encoding: str, pad: int = 0, **fields):
    """A duck-typed sensor_msgs/Image with ``pad`` bytes of row padding."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    step = rows.shape[1] + pad
    padded = np.full((h, step), 0xAB, dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                          data=padded.tobytes())
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def compressed_msg(rgb: np.ndarray, ext: str = ".jpg", fmt: str | None = None, params=()):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return SimpleNamespace(format=fmt if fmt is not None else ext[1:].replace("jpg", "jpeg"), data=buf.tobytes())


def smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    """JPEG-friendly content, so lossy round trips stay close."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)


# -- raw encodings against hand-made expectations --------------------------------------------------


@pytest.mark.parametrize("pad", [0, 3])
def test_rgb8(pad: int) -> None:
    out = decode_raw(raw_msg(RGB, "rgb8", pad))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("pad", [0, 1])
def test_bgr8(pad: int) -> None:
    np.testing.assert_array_equal(decode_raw(raw_msg(RGB[..., ::-1], "bgr8", pad)), RGB)


def test_mono8_replicates_grey() -> None:
    grey = RNG.integers(0, 256, size=(4, 6, 1), dtype=np.uint8)
    out = decode_raw(raw_msg(grey, "mono8", pad=2))
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey[..., 0])


def test_rgba8_and_bgra8_drop_alpha() -> None:
    alpha = RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)
    np.testing.assert_array_equal(decode_raw(raw_msg(np.concatenate([RGB, alpha], 2), "rgba8", 4)), RGB)
    bgra = np.concatenate([RGB[..., ::-1], alpha], 2)
    np.testing.assert_array_equal(decode_raw(raw_msg(bgra, "bgra8")), RGB)


def test_big_endian_flag_does_not_matter_for_8_bit() -> None:
    np.testing.assert_array_equal(decode_raw(raw_msg(RGB, "rgb8", is_bigendian=1)), RGB)


def test_single_pixel_by_hand() -> None:
    msg = SimpleNamespace(height=1, width=2, encoding="bgr8", is_bigendian=0, step=8,
                          data=bytes([1, 2, 3, 4, 5, 6, 99, 99]))
    np.testing.assert_array_equal(decode_raw(msg), [[[3, 2, 1], [6, 5, 4]]])


def test_accepts_real_ros_messages() -> None:
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    msg = sensor_msgs.Image(height=5, width=7, encoding="rgb8", step=21, data=RGB.tobytes())
    np.testing.assert_array_equal(decode(msg), RGB)
    comp = sensor_msgs.CompressedImage(format="png", data=compressed_msg(RGB, ".png").data)
    np.testing.assert_array_equal(decode(comp), RGB)


# -- compressed -------------------------------------------------------------------------------------


def test_png_is_lossless() -> None:
    np.testing.assert_array_equal(decode_compressed(compressed_msg(RGB, ".png")), RGB)


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "JPG", ""])
def test_jpeg_formats(fmt: str) -> None:
    image = smooth_image()
    out = decode(compressed_msg(image, ".jpg", fmt=fmt, params=[cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image).mean() < 3


def test_jpeg_size_from_baseline_and_progressive_headers() -> None:
    image = smooth_image(33, 57)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        data = compressed_msg(image, params=params).data
        assert jpeg_size(data) == (57, 33)
    assert image_size(compressed_msg(image, ".png")) == (57, 33)


# -- bounds and errors ------------------------------------------------------------------------------


def _reason(msg, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode(msg, **kwargs)
    return info.value.reason


def test_zero_and_huge_sizes() -> None:
    assert _reason(SimpleNamespace(height=0, width=4, encoding="rgb8", is_bigendian=0, step=12, data=b"")) == "size"
    big = np.zeros((2, 4097, 3), dtype=np.uint8)
    assert _reason(raw_msg(big, "rgb8")) == "size"
    assert _reason(compressed_msg(big, ".png")) == "size"
    np.testing.assert_array_equal(decode(raw_msg(big, "rgb8"), max_side=5000), big)
    assert _reason(raw_msg(RGB, "rgb8"), max_side=6) == "size"


def test_huge_jpeg_header_is_rejected_before_decoding() -> None:
    data = bytearray(compressed_msg(smooth_image()).data)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    assert _reason(SimpleNamespace(format="jpeg", data=bytes(data))) == "size"


def test_length_mismatch() -> None:
    msg = raw_msg(RGB, "rgb8")
    msg.data = msg.data[:-1]
    assert _reason(msg) == "length"
    short_step = raw_msg(RGB, "rgb8")
    short_step.step = 20
    assert _reason(short_step) == "length"


@pytest.mark.parametrize("encoding", ["mono16", "yuv422", "16UC1", "bayer_rggb8", ""])
def test_unknown_encoding(encoding: str) -> None:
    msg = raw_msg(RGB, "rgb8")
    msg.encoding = encoding
    assert _reason(msg) == "encoding"


def test_corrupt_and_truncated_jpeg() -> None:
    good = compressed_msg(smooth_image()).data
    garbage = good[:4] + RNG.integers(0, 256, size=600, dtype=np.uint8).tobytes()
    assert _reason(SimpleNamespace(format="jpeg", data=garbage)) == "corrupt"
    assert _reason(SimpleNamespace(format="jpeg", data=good[: len(good) // 2])) == "corrupt"
    assert _reason(SimpleNamespace(format="jpeg", data=b"not an image at all")) == "corrupt"
    # Scrambled entropy data behind intact headers: still an error, never a crash.
    scrambled = bytearray(good)
    sos = scrambled.index(b"\xff\xda")
    scrambled[sos + 20 : -2] = bytes(len(scrambled) - sos - 22)
    try:
        out = decode(SimpleNamespace(format="jpeg", data=bytes(scrambled)))
        assert out.shape == (48, 64, 3)
    except ImageDecodeError as exc:
        assert exc.reason == "corrupt"


def test_empty_and_mismatched_format() -> None:
    assert _reason(SimpleNamespace(format="jpeg", data=b"")) == "empty"
    assert _reason(compressed_msg(RGB, ".jpg", fmt="png")) == "format"
    assert _reason(compressed_msg(RGB, ".png", fmt="16UC1; compressedDepth png")) == "format"


def test_error_is_a_value_error_with_reason() -> None:
    err = ImageDecodeError("size", "too big")
    assert isinstance(err, ValueError) and err.reason == "size" and "too big" in str(err)


# -- cv_bridge and GPU equivalence ------------------------------------------------------------------

SAMPLES = {
    "rgb8": lambda: raw_msg(RGB, "rgb8", pad=3),
    "bgr8": lambda: raw_msg(RGB[..., ::-1], "bgr8"),
    "mono8": lambda: raw_msg(RGB[..., :1], "mono8", pad=1),
    "rgba8": lambda: raw_msg(np.concatenate([RGB, RGB[..., :1]], 2), "rgba8"),
    "bgra8": lambda: raw_msg(np.concatenate([RGB[..., ::-1], RGB[..., :1]], 2), "bgra8", pad=4),
    "png": lambda: compressed_msg(RGB, ".png"),
    "jpeg": lambda: compressed_msg(smooth_image(), ".jpg"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cv_bridge_and_numpy_paths_agree(name: str) -> None:
    if not HAVE_CV_BRIDGE:
        pytest.skip("cv_bridge comes with a system ROS 2 install")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    sample = SAMPLES[name]()
    if hasattr(sample, "encoding"):
        msg = sensor_msgs.Image(height=sample.height, width=sample.width, encoding=sample.encoding,
                                is_bigendian=0, step=sample.step, data=sample.data)
    else:
        msg = sensor_msgs.CompressedImage(format=sample.format, data=sample.data)
    np.testing.assert_array_equal(decode(msg, use_cv_bridge=True), decode(msg, use_cv_bridge=False, gpu=False))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_numpy_path_is_what_decode_uses_without_cv_bridge(name: str, monkeypatch) -> None:
    monkeypatch.setattr(image_codec, "HAVE_CV_BRIDGE", False)
    msg = SAMPLES[name]()
    expected = decode_raw(msg) if hasattr(msg, "encoding") else decode_compressed(msg, gpu=False)
    np.testing.assert_array_equal(decode(msg, gpu=False), expected)


@pytest.mark.gpu
def test_gpu_jpeg_decode_matches_opencv() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert image_codec._gpu_jpeg_decoder() is not None
    msg = compressed_msg(smooth_image(90, 160), params=[cv2.IMWRITE_JPEG_QUALITY, 90])
    gpu = decode_compressed(msg, gpu=True)
    cpu = decode_compressed(msg, gpu=False)
    assert gpu.shape == cpu.shape
    # nvjpeg and libjpeg-turbo may round the IDCT and chroma upsampling differently.
    assert np.abs(gpu.astype(int) - cpu).max() <= 8
