"""Package archives (``.erpkg``): a strict plain-tar reader that verifies before it unpacks.

The transfer form of a package is an uncompressed POSIX (ustar) tar whose first member is ``manifest.json``,
optionally followed by ``signature.json``, then the files the manifest lists. Reading one:

1. the manifest and signature members are read first (each under a small size limit) and the signature is checked
   against the trust store, before the manifest is even parsed;
2. only the listed regular files are extracted, each one streamed through SHA-256 and refused unless its size is
   the listed one; the listed sizes together stay under a total limit, and the archive under a member count;
3. anything else (compressed archives, links, directories, devices, sparse or pax/GNU extension members, unsafe or
   duplicate names, unlisted or missing files, trailing data inside the archive) is refused, and a refused
   extraction leaves nothing behind (it happens in a temporary directory renamed into place only when complete).

This is deliberately not :mod:`tarfile`: its pax and GNU headers, sparse members and ``r:*`` decompression all
allocate what the archive declares. Here memory is bounded by the manifest limit and one copy buffer.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from edge_runtime.errors import PackageError, SignatureError, validation_message
from edge_runtime.fsutil import atomic_directory
from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edge_runtime.package.signing import MAX_SIGNATURE_DOC, RELEASE, TrustStore, verify_bytes

BLOCK = 512
_COPY = 1 << 20
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_TYPE_NAMES = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device",
               b"5": "directory", b"6": "fifo", b"7": "contiguous file", b"x": "pax header", b"g": "pax header",
               b"L": "GNU long name", b"K": "GNU long link", b"S": "sparse file"}


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may make this process read or write."""

    max_total_bytes: int = 4 << 30  # sum of the listed file sizes
    max_members: int = 1024
    max_manifest_bytes: int = 8 << 20


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class _Member:
    name: str
    size: int


class _Reader:
    """Walks ustar headers of a plain file; reads a member's data only through :meth:`read` / :meth:`stream`."""

    def __init__(self, f: BinaryIO, archive: Path, limits: ArchiveLimits) -> None:
        self.f, self.archive, self.limits = f, archive, limits
        self.count = 0
        self._left = 0  # unread data bytes (plus padding) of the current member

    def fail(self, why: str) -> PackageError:
        return PackageError(f"{self.archive} is not a valid package archive: {why}")

    def next(self) -> _Member | None:
        self._skip_rest()
        header = self.f.read(BLOCK)
        if len(header) == 0 or header == bytes(BLOCK):
            return None
        if len(header) < BLOCK:
            raise self.fail("truncated header")
        self.count += 1
        if self.count > self.limits.max_members:
            raise self.fail(f"more than {self.limits.max_members} members")
        member = _parse_header(header, self.fail)
        self._left = -(-member.size // BLOCK) * BLOCK
        return member

    def _skip_rest(self) -> None:
        if self._left:
            self.f.seek(self._left, io.SEEK_CUR)
            self._left = 0

    def read(self, member: _Member, limit: int, what: str) -> bytes:
        if member.size > limit:
            raise self.fail(f"{what} is {member.size} bytes, more than the {limit} allowed")
        data = self.f.read(member.size)
        if len(data) != member.size:
            raise self.fail(f"{member.name} is truncated")
        self._left -= member.size
        return data

    def stream(self, member: _Member) -> Iterator[bytes]:
        """Yield the member's bytes in bounded chunks; never more than its header's size."""
        left = member.size
        while left:
            chunk = self.f.read(min(_COPY, left))
            if not chunk:
                raise self.fail(f"{member.name} is truncated")
            left -= len(chunk)
            self._left -= len(chunk)
            yield chunk


def _octal(field: bytes, fail) -> int:  # type: ignore[no-untyped-def]
    if field[:1] and field[0] & 0x80:
        raise fail("base-256 size fields are not accepted")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as exc:
        raise fail("bad numeric field in a header") from exc


def _parse_header(header: bytes, fail) -> _Member:  # type: ignore[no-untyped-def]
    if header[257:262] != b"ustar":
        raise fail("not a POSIX ustar archive")
    if _octal(header[148:156], fail) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise fail("header checksum mismatch (corrupt)")
    kind = header[156:157]
    if kind not in (b"0", b"\0"):
        raise fail(f"has a {_TYPE_NAMES.get(kind, f'type {kind!r}')} member; only regular files are accepted")
    try:
        name = header[:100].split(b"\0", 1)[0].decode("ascii")
        prefix = header[345:500].split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise fail("a member name is not ASCII") from exc
    name = f"{prefix}/{name}" if prefix else name
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise fail(f"unsafe member name {name!r}")
    return _Member(name, _octal(header[124:136], fail))


def _check_plain(f: BinaryIO, archive: Path) -> None:
    magic = f.read(6)
    f.seek(0)
    for sig, kind in _COMPRESSED.items():
        if magic.startswith(sig):
            raise PackageError(
                f"{archive} is a {kind}-compressed archive; packages are plain tar (`edge-runtime pack` writes them)"
            )


@dataclass(frozen=True)
class ArchiveHead:
    """The manifest and signature members of an archive, read before anything else."""

    manifest_raw: bytes
    signature_raw: bytes | None


def _read_head(r: _Reader) -> tuple[ArchiveHead, _Member | None]:
    first = r.next()
    if first is None or first.name != MANIFEST_NAME:
        raise r.fail(f"its first member must be {MANIFEST_NAME}")
    raw = r.read(first, r.limits.max_manifest_bytes, MANIFEST_NAME)
    second = r.next()
    if second is not None and second.name == SIGNATURE_NAME:
        return ArchiveHead(raw, r.read(second, MAX_SIGNATURE_DOC, SIGNATURE_NAME)), r.next()
    return ArchiveHead(raw, None), second


def read_archive_head(archive: str | Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveHead:
    """Read only the manifest and signature members (for a cache check or a publisher reading the version)."""
    archive = Path(archive)
    with _open(archive) as f:
        return _read_head(_Reader(f, archive, limits))[0]


def _open(archive: Path) -> BinaryIO:
    try:
        f = open(archive, "rb")  # noqa: SIM115 (closed by the callers' with)
    except OSError as exc:
        raise PackageError(f"cannot read {archive}: {exc.strerror}") from exc
    _check_plain(f, archive)
    return f


def check_signature(
    manifest_raw: bytes, signature_raw: bytes | None, trust: TrustStore | None, must_sign: bool, where: Path
) -> str | None:
    """The signer's key id (release role); None when no signature is required and none can be checked."""
    if signature_raw is None:
        if must_sign:
            raise SignatureError(f"package {where} is not signed ({SIGNATURE_NAME} missing)", "signature_missing")
        return None
    if not trust and not must_sign:
        return None
    return verify_bytes(manifest_raw, signature_raw, trust or TrustStore({}), role=RELEASE)


def parse_manifest(raw: bytes, where: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise PackageError(f"invalid manifest in {where}: {validation_message(exc, root='(root)')}") from exc


def extract_verified(
    archive: str | Path,
    dest: str | Path,
    trust: TrustStore | None = None,
    must_sign: bool = True,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> tuple[Manifest, str | None]:
    """Verify and extract ``archive`` into the new directory ``dest`` (replacing it only when complete).

    Returns the manifest and the signer's key id. Raises PackageError / SignatureError, leaving no ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    with _open(archive) as f:
        r = _Reader(f, archive, limits)
        head, member = _read_head(r)
        signer = check_signature(head.manifest_raw, head.signature_raw, trust, must_sign, archive)
        manifest = parse_manifest(head.manifest_raw, archive)
        entries = {e.path: e for e in manifest.files}
        total = sum(e.size for e in entries.values())
        if total > limits.max_total_bytes:
            raise r.fail(f"its files add up to {total} bytes, more than the {limits.max_total_bytes} allowed")
        with atomic_directory(dest, overwrite=True) as tmp:
            (tmp / MANIFEST_NAME).write_bytes(head.manifest_raw)
            if head.signature_raw is not None:
                (tmp / SIGNATURE_NAME).write_bytes(head.signature_raw)
            seen: set[str] = set()
            while member is not None:
                _extract_member(r, member, entries, seen, tmp)
                member = r.next()
            missing = sorted(set(entries) - seen)
            if missing:
                raise r.fail(f"it lacks listed file(s) {', '.join(missing)}")
    return manifest, signer


def _extract_member(r: _Reader, member: _Member, entries: dict, seen: set[str], tmp: Path) -> None:  # type: ignore[type-arg]
    entry = entries.get(member.name)
    if entry is None:
        raise r.fail(f"it has a member its manifest does not list: {member.name!r}")
    if member.name in seen:
        raise r.fail(f"{member.name!r} appears twice")
    if member.size != entry.size:
        raise r.fail(f"{member.name} is {member.size} bytes, the manifest says {entry.size}")
    seen.add(member.name)
    target = tmp / member.name
    h = hashlib.sha256()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # noqa: SIM115 (closed below)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:  # "a" and "a/b" both listed
        raise r.fail(f"{member.name!r} collides with another listed path") from exc
    with out:
        for chunk in r.stream(member):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != entry.sha256:
        raise r.fail(f"{member.name} does not match its sha256 in the manifest (corrupt or tampered)")


def write_archive(members: list[tuple[str, bytes | Path]], out: BinaryIO) -> None:
    """Write a strict ustar stream: regular files only, mode 0644, mtime 0, owner 0 (deterministic)."""
    for name, content in members:
        data_len = len(content) if isinstance(content, bytes) else content.stat().st_size
        out.write(_header(name, data_len))
        if isinstance(content, bytes):
            out.write(content)
        else:
            with open(content, "rb") as src:
                while chunk := src.read(_COPY):
                    out.write(chunk)
        out.write(bytes(-data_len % BLOCK))
    out.write(bytes(2 * BLOCK))


def _header(name: str, size: int) -> bytes:
    if size >= 8 << 30:
        raise PackageError(f"{name} is {size} bytes; archives hold files under 8 GiB")
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError as exc:
        raise PackageError(f"package path {name!r} is not ASCII; archives hold ASCII names only") from exc
    prefix = b""
    if len(raw) > 100:
        cut = raw.rfind(b"/", 0, 156)
        if cut <= 0 or len(raw) - cut - 1 > 100:
            raise PackageError(f"package path too long for an archive: {name}")
        prefix, raw = raw[:cut], raw[cut + 1:]
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)
