"""Camera messages to RGB uint8 HxWx3 arrays, without importing ROS.

Works on anything shaped like ``sensor_msgs/CompressedImage`` (``format``, ``data``) or
``sensor_msgs/Image`` (``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``), so
it serves the node, bag readers and tests alike. ``cv_bridge`` is used when it is importable (a
system ROS install); otherwise an equivalent numpy/OpenCV path gives the same arrays. JPEG goes
through nvjpeg (``torchvision.io.decode_jpeg`` on CUDA) when torchvision and a CUDA device are
present, falling back to OpenCV on any failure.

Every problem raises :class:`ImageDecodeError` with a short ``reason`` the node counts by:
``empty``, ``format``, ``encoding``, ``size``, ``length`` or ``corrupt``. Sizes are checked from the
message fields or the JPEG/PNG header *before* decoding, so a hostile 65535x65535 JPEG never
allocates its pixels.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import cv2
import numpy as np

DEFAULT_MAX_SIDE = 4096

# Raw encodings the node accepts: channels per pixel. All are 8-bit, so ``is_bigendian`` cannot
# change the bytes; 16-bit encodings (where it would) are rejected as unknown.
RAW_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

try:  # A system ROS install has cv_bridge; the pip wheels do not.
    from cv_bridge import CvBridge as _CvBridge

    HAVE_CV_BRIDGE = True
except ImportError:  # pragma: no cover - depends on the install
    _CvBridge = None
    HAVE_CV_BRIDGE = False


class ImageDecodeError(ValueError):
    """An image message that cannot become an RGB array; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _bytes(data: Any) -> np.ndarray:
    """A zero-copy uint8 view of ``data`` (bytes, bytearray, array('B'), memoryview) or a copy of a list."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_size(width: int, height: int, max_side: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError("size", f"empty image {width}x{height}")
    if width > max_side or height > max_side:
        raise ImageDecodeError("size", f"{width}x{height} exceeds the bound of {max_side} px per side")


# -- compressed ------------------------------------------------------------------------------------

# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, walking the marker segments."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageDecodeError("corrupt", f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image or start of scan before any frame header
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise ImageDecodeError("corrupt", "JPEG without a frame header")


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageDecodeError("corrupt", "PNG without an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def compressed_kind(msg: Any) -> str:
    """``jpeg`` or ``png``, from the data's magic bytes (the ``format`` field only has to agree)."""
    data = bytes(_bytes(msg.data)[:8])
    if not data:
        raise ImageDecodeError("empty", "compressed image without data")
    # image_transport writes e.g. "rgb8; jpeg compressed bgr8"; bag converters write "jpeg".
    fmt = str(getattr(msg, "format", "") or "").lower()
    if "compresseddepth" in fmt:
        raise ImageDecodeError("format", f"depth images are not camera views (format {fmt!r})")
    if data.startswith(JPEG_MAGIC):
        kind = "jpeg"
    elif data.startswith(PNG_MAGIC):
        kind = "png"
    else:
        raise ImageDecodeError("corrupt", f"data is neither JPEG nor PNG (format {fmt!r})")
    if fmt and not (kind in fmt or (kind == "jpeg" and "jpg" in fmt)):
        raise ImageDecodeError("format", f"format {fmt!r} does not match the {kind.upper()} data")
    return kind


def _compressed_size(msg: Any) -> tuple[str, int, int]:
    kind = compressed_kind(msg)
    data = _bytes(msg.data)
    # The frame header is near the start; a bounded prefix keeps this cheap for big frames.
    head = bytes(data[: 1 << 16]) if kind == "jpeg" else bytes(data[:24])
    width, height = jpeg_size(head) if kind == "jpeg" else png_size(head)
    if kind == "jpeg":
        # A JPEG ends with EOI (FFD9), possibly followed by padding; libjpeg decodes truncated data
        # to grey with only a warning, so a missing EOI is the reliable sign of a cut frame.
        tail = bytes(data[-64:]).rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            raise ImageDecodeError("corrupt", "truncated JPEG (no end-of-image marker)")
    return kind, width, height


def _gpu_jpeg_decoder():
    """torchvision's nvjpeg decoder when torchvision and CUDA are present, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(buffer: np.ndarray) -> np.ndarray:
        tensor = torch.frombuffer(bytearray(buffer), dtype=torch.uint8)
        image = decode_jpeg(tensor, mode=ImageReadMode.RGB, device="cuda")
        return image.permute(1, 2, 0).contiguous().cpu().numpy()

    return decode


def decode_compressed(msg: Any, *, max_side: int = DEFAULT_MAX_SIDE, gpu: bool | None = None) -> np.ndarray:
    """JPEG/PNG ``CompressedImage`` to RGB uint8 HxWx3 (numpy/OpenCV path, nvjpeg when ``gpu``)."""
    kind, width, height = _compressed_size(msg)
    _check_size(width, height, max_side)
    data = _bytes(msg.data)
    if kind == "jpeg" and gpu is not False:
        decoder = _gpu_jpeg_decoder()
        if decoder is not None:
            try:
                return _checked(decoder(data), width, height)
            except ImageDecodeError:
                raise
            except Exception:  # nvjpeg rejects some valid files; OpenCV decides
                pass
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError("corrupt", f"{kind.upper()} data could not be decoded")
    return _checked(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width, height)


def _checked(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise ImageDecodeError("corrupt", f"decoded {rgb.shape} {rgb.dtype}, header said {width}x{height}")
    return np.ascontiguousarray(rgb)


# -- raw -------------------------------------------------------------------------------------------


def _raw_layout(msg: Any, max_side: int) -> tuple[int, int, int, int]:
    encoding = str(msg.encoding)
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(
            "encoding", f"unsupported encoding {encoding!r}; expected one of {', '.join(RAW_ENCODINGS)}"
        )
    channels = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, max_side)
    row = width * channels
    if step < row:
        raise ImageDecodeError("length", f"step {step} is shorter than a {encoding} row of {row} bytes")
    size = len(msg.data)
    if size != step * height:
        raise ImageDecodeError("length", f"data has {size} bytes, expected step*height = {step * height}")
    return height, width, step, channels


def decode_raw(msg: Any, *, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """``Image`` (rgb8, bgr8, mono8, rgba8, bgra8) to RGB uint8 HxWx3 with numpy, honouring ``step``."""
    height, width, step, channels = _raw_layout(msg, max_side)
    # Rows may be padded to ``step`` bytes; drop the padding before splitting pixels.
    rows = _bytes(msg.data).reshape(height, step)[:, : width * channels]
    pixels = rows.reshape(height, width, channels)
    encoding = msg.encoding
    if encoding == "rgb8":
        rgb = pixels
    elif encoding == "bgr8":
        rgb = pixels[..., ::-1]
    elif encoding == "mono8":
        rgb = np.repeat(pixels, 3, axis=2)
    elif encoding == "rgba8":
        rgb = pixels[..., :3]
    else:  # bgra8
        rgb = pixels[..., 2::-1]
    return np.ascontiguousarray(rgb)


# -- entry points ----------------------------------------------------------------------------------


def image_size(msg: Any, *, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """Validate without decoding and return (width, height); cheap enough for a subscription callback."""
    if is_compressed(msg):
        _, width, height = _compressed_size(msg)
    else:
        height, width, _, _ = _raw_layout(msg, max_side)
    _check_size(width, height, max_side)
    return width, height


def decode_with_cv_bridge(msg: Any, *, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The same conversion through cv_bridge (system ROS installs); validation is shared."""
    if not HAVE_CV_BRIDGE:
        raise RuntimeError("cv_bridge is not importable")
    image_size(msg, max_side=max_side)
    bridge = _CvBridge()
    try:
        if is_compressed(msg):
            rgb = bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
        else:
            rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as exc:  # CvBridgeError and OpenCV errors alike
        raise ImageDecodeError("corrupt", str(exc)) from exc
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageDecodeError("corrupt", "cv_bridge returned no RGB image")
    return np.ascontiguousarray(rgb)


def decode(msg: Any, *, max_side: int = DEFAULT_MAX_SIDE, use_cv_bridge: bool | None = None,
           gpu: bool | None = None) -> np.ndarray:
    """Any supported camera message to RGB uint8 HxWx3.

    ``use_cv_bridge=None`` uses it when importable, except for JPEG when nvjpeg is available.
    ``gpu=None`` decodes JPEG on the GPU when torchvision and CUDA are present.
    """
    compressed = is_compressed(msg)
    if use_cv_bridge is None:
        use_cv_bridge = HAVE_CV_BRIDGE and not (compressed and gpu is not False and _gpu_jpeg_decoder())
    if use_cv_bridge:
        try:
            return decode_with_cv_bridge(msg, max_side=max_side)
        except ImageDecodeError:
            if not compressed:
                raise
            # cv_bridge assumes 3-channel JPEGs; OpenCV directly also reads grey ones (or says why not).
    if compressed:
        return decode_compressed(msg, max_side=max_side, gpu=gpu)
    return decode_raw(msg, max_side=max_side)
