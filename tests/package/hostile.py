"""Hostile package archives, built byte by byte (shared by tests/package and benchmarks/package_figures.py).

Every builder starts from a real, signed package directory, so each archive differs from a good one only by its
attack. Headers are written here rather than with :mod:`tarfile` so that any member type, size or name can be set.
"""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from edge_runtime.package.archive import BLOCK, _header
from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME

MiB = 1 << 20


def header(name: str, size: int, kind: bytes = b"0", linkname: str = "") -> bytes:
    """A ustar header of any type (the archive module's own writer, with the type and link name replaced)."""
    h = bytearray(_header(name, size))
    h[156:157] = kind
    h[157:157 + len(linkname)] = linkname.encode()
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def member(name: str, data: bytes, kind: bytes = b"0", linkname: str = "") -> bytes:
    return header(name, len(data), kind, linkname) + data + bytes(-len(data) % BLOCK)


def head_members(root: Path) -> list[bytes]:
    """The manifest and signature members of a package directory, in archive order."""
    out = [member(MANIFEST_NAME, (root / MANIFEST_NAME).read_bytes())]
    if (root / SIGNATURE_NAME).is_file():
        out.append(member(SIGNATURE_NAME, (root / SIGNATURE_NAME).read_bytes()))
    return out


def file_members(root: Path, skip: Iterable[str] = ()) -> list[bytes]:
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [member(n, (root / n).read_bytes()) for n in names if n not in (MANIFEST_NAME, SIGNATURE_NAME, *skip)]


def write(out: Path, parts: Iterable[bytes], end: bool = True) -> Path:
    out.write_bytes(b"".join(parts) + (bytes(2 * BLOCK) if end else b""))
    return out


def gzip_bomb(root: Path, out: Path, zeros: int = 1 << 30) -> Path:
    """The package plus a ``zeros``-byte member of zeros, gzip-compressed (about 1000:1), streamed to disk."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(8 * MiB)
    with open(out, "wb") as f:
        for part in [*head_members(root), *file_members(root), header("bomb.bin", zeros)]:
            f.write(z.compress(part))
        left = zeros
        while left:
            n = min(left, len(chunk))
            f.write(z.compress(chunk[:n]))
            left -= n
        f.write(z.compress(bytes(-zeros % BLOCK + 2 * BLOCK)))
        f.write(z.flush())
    return out


def gnu_sparse(root: Path, out: Path, size: int = 16 << 30, fmt: str = "gnu") -> Path:
    """GNU tar's own sparse member (``--sparse``): a tiny archive whose model file expands to ``size`` bytes."""
    work = out.with_suffix(".d")
    work.mkdir()
    for name in (MANIFEST_NAME, SIGNATURE_NAME, "golden.npz"):
        if (root / name).is_file():
            (work / name).write_bytes((root / name).read_bytes())
    with open(work / "model.onnx", "wb") as f:
        f.truncate(size)
    names = [n for n in (MANIFEST_NAME, SIGNATURE_NAME, "model.onnx", "golden.npz") if (work / n).exists()]
    subprocess.run(["tar", f"--format={fmt}", "--sparse", "-cf", str(out), "-C", str(work), *names], check=True)
    return out


def with_member(root: Path, out: Path, extra: bytes) -> Path:
    """The package with one more member (before the listed files)."""
    return write(out, [*head_members(root), extra, *file_members(root)])


def replacing(root: Path, out: Path, name: str, data: bytes) -> Path:
    """The package with the listed file ``name`` carrying other bytes."""
    return write(out, [*head_members(root), member(name, data), *file_members(root, skip=[name])])


def attacks(root: Path, out_dir: Path, big: int = 1 << 30) -> dict[str, Callable[[], Path]]:
    """Builders of every hostile archive by name, for a signed package directory ``root``."""
    model = (root / "model.onnx").read_bytes()
    d = out_dir
    return {
        "gzip_bomb": lambda: gzip_bomb(root, d / "bomb.erpkg", big),
        "gnu_sparse": lambda: gnu_sparse(root, d / "sparse.erpkg"),
        "pax_sparse": lambda: gnu_sparse(root, d / "pax-sparse.erpkg", fmt="pax"),
        "huge_declared_member": lambda: write(
            d / "huge.erpkg", [*head_members(root), header("model.onnx", 7 << 30)], end=False
        ),
        "extra_member": lambda: with_member(root, d / "extra.erpkg", member("evil.py", b"import os\n")),
        "symlink": lambda: with_member(root, d / "link.erpkg", member("key", b"", b"2", "/etc/shadow")),
        "hardlink": lambda: with_member(root, d / "hard.erpkg", member("key", b"", b"1", "/etc/shadow")),
        "directory": lambda: with_member(root, d / "dir.erpkg", member("sub", b"", b"5")),
        "path_traversal": lambda: with_member(root, d / "dots.erpkg", member("../escape.txt", b"x")),
        "absolute_path": lambda: with_member(root, d / "abs.erpkg", member("/tmp/escape.txt", b"x")),
        "duplicate_member": lambda: write(
            d / "dup.erpkg", [*head_members(root), *file_members(root), member("model.onnx", model)]
        ),
        "tampered_file": lambda: replacing(root, d / "tampered.erpkg", "model.onnx", bytes(len(model))),
        "resized_file": lambda: replacing(root, d / "resized.erpkg", "model.onnx", model + b"x"),
        "missing_file": lambda: write(d / "missing.erpkg", [*head_members(root), *file_members(root, ["golden.npz"])]),
        "manifest_not_first": lambda: write(d / "order.erpkg", [*file_members(root), *head_members(root)]),
        "truncated": lambda: _truncated(root, d / "trunc.erpkg"),
        "many_members": lambda: write(
            d / "many.erpkg", [*head_members(root), *(member(f"m{i}", b"") for i in range(5000))]
        ),
        "not_a_tar": lambda: write(d / "noise.erpkg", [bytes(range(256)) * 8], end=False),
    }


def _truncated(root: Path, out: Path) -> Path:
    data = b"".join([*head_members(root), *file_members(root)])
    out.write_bytes(data[: len(data) - 700])
    return out
