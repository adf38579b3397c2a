"""Image dimensions read from the file header, before anything is decoded.

A 1.2 MB PNG can declare 20000×20000 pixels, and ``cv2.imdecode`` allocates what the header declares (1.2 GB for
that one). Reading the size first lets a service refuse such an image at the cost of a few bytes. Only the formats
parsed here are accepted (PNG, JPEG, BMP); anything else is refused, so no other decoder is reachable from outside.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from edge_runtime.errors import InputError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field
_JPEG_MAX_SEGMENTS = 4096  # APPn/DQT/DHT/COM segments before the frame header; real files have a handful
_FILL = re.compile(rb"\xff+")


class ImageHeaderError(InputError):
    """The bytes are not an image of a supported format, or its header is corrupt or truncated.

    ``unsupported`` is True when the format itself is not one this module reads (HTTP 415 rather than 400).
    """

    def __init__(self, reason: str, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


@dataclass(frozen=True)
class ImageSize:
    """What a header declares: the format name and the size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_size(data: bytes) -> ImageSize:
    """The format and size an image's header declares; ImageHeaderError when it is unsupported, corrupt or 0×0."""
    if data.startswith(_PNG_MAGIC):
        size = _png(data)
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg(data)
    elif data.startswith(b"BM"):
        size = _bmp(data)
    else:
        raise ImageHeaderError("unsupported image format: send JPEG, PNG or BMP", unsupported=True)
    if size.width <= 0 or size.height <= 0:
        raise ImageHeaderError(f"{size.format} header declares an empty image ({size.width}x{size.height})")
    return size


def _png(data: bytes) -> ImageSize:
    # signature, then the IHDR chunk first: length (13), type, width, height (big-endian uint32)
    if len(data) < 24:
        raise ImageHeaderError("truncated PNG header")
    if data[12:16] != b"IHDR":
        raise ImageHeaderError("corrupt PNG: the first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return ImageSize("PNG", width, height)


def _jpeg(data: bytes) -> ImageSize:
    """Walk the marker segments up to the first start-of-frame, as libjpeg does (skipping APPn bodies whole, so an
    EXIF thumbnail's frame header is never mistaken for the image's)."""
    i, n = 2, len(data)
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i >= n:
            break
        if data[i] != 0xFF:
            raise ImageHeaderError("corrupt JPEG: a marker was expected")
        fill = _FILL.match(data, i)
        assert fill is not None  # data[i] is 0xFF
        i = fill.end()
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("corrupt JPEG: no frame header before the image data")
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise ImageHeaderError("corrupt JPEG: a segment length is below 2")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return ImageSize("JPEG", width, height)
        i += length
    else:
        raise ImageHeaderError(f"corrupt JPEG: more than {_JPEG_MAX_SEGMENTS} segments before the frame header")
    raise ImageHeaderError("truncated JPEG header")


def _bmp(data: bytes) -> ImageSize:
    # file header (14 bytes), then the DIB header: its size, then width and height
    if len(data) < 26:
        raise ImageHeaderError("truncated BMP header")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    elif dib >= 40:  # BITMAPINFOHEADER and later: signed 32-bit, a negative height is a top-down image
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)
    else:
        raise ImageHeaderError(f"corrupt BMP: unknown header size {dib}")
    return ImageSize("BMP", width, height)
