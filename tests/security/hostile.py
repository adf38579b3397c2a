"""Hostile inputs, built here (nothing downloaded): image bombs, forged headers, deep JSON, over-long lines.

Shared by the security tests and ``benchmarks/security_figures.py``.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from functools import lru_cache


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, color_type: int = 2) -> bytes:
    """PNG signature plus an IHDR chunk declaring ``width`` x ``height`` (8-bit, RGB by default)."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares the size and whose image data is missing (the 60000x60000 cv2.error case)."""
    return png_ihdr(width, height) + _chunk(b"IEND", b"")


@lru_cache(maxsize=4)
def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid RGB PNG of zeros: about 1.2 MB on the wire for 20000x20000, 1.2 GB once decoded.

    Built fast: one block of rows deflated once with a full flush (so it decodes on its own) and repeated; the
    zlib trailer's Adler-32 is computed over the whole decoded size.
    """
    row = bytes(1 + 3 * width)  # filter byte 0, then the pixels
    rows_per_block = max(1, min(height, (4 << 20) // len(row)))
    while height % rows_per_block:
        rows_per_block -= 1
    block = row * rows_per_block
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and trailer are written here
    body = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    repeats = height // rows_per_block
    adler = 1
    for _ in range(repeats):
        adler = zlib.adler32(block, adler)
    final = b"\x03\x00"  # an empty final fixed-Huffman block
    stream = b"\x78\xda" + body * repeats + final + struct.pack(">I", adler)
    return png_ihdr(width, height) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def jpeg_sof(width: int, height: int) -> bytes:
    """A JPEG start (SOI, an APP0 segment, SOF0 declaring ``width`` x ``height``) with no image data."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def bmp_header(width: int, height: int) -> bytes:
    """A BMP file and info header declaring ``width`` x ``height`` at 24 bits, with no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def deep_json(depth: int = 60000, bracket: bytes = b"[") -> bytes:
    """``depth`` opening brackets (the datagram that killed the UDP reader), unclosed."""
    return bracket * depth


def gzip_of_zeros_after(prefix: bytes, zeros: int, suffix: bytes = b"") -> bytes:
    """A gzip file that inflates to ``prefix``, ``zeros`` zero bytes, then ``suffix`` (a decompression bomb: about
    1 KB on the wire per MiB inflated). Built from one deflated block repeated, like png_bomb."""
    block_size = 1 << 20
    assert zeros % block_size == 0
    zero_block = bytes(block_size)

    def deflated(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    crc = zlib.crc32(prefix)
    for _ in range(zeros // block_size):
        crc = zlib.crc32(zero_block, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + zeros + len(suffix)
    body = deflated(prefix) + deflated(zero_block) * (zeros // block_size) + deflated(suffix) + b"\x03\x00"
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc, size & 0xFFFFFFFF)


class MemoryLink:
    """The transfer's Link protocol over in-memory retained messages: what the broker would deliver (each on its
    own thread, like paho's network thread)."""

    def __init__(self, retained: dict[str, bytes]) -> None:
        self.retained = retained

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None:
        if topic in self.retained:
            threading.Thread(target=handler, args=(topic, self.retained[topic]), daemon=True).start()

    def unsubscribe(self, topic: str) -> None:
        pass
