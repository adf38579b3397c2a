"""The hostile cases of ``security_figures.py``: generated with fixed seeds, nothing downloaded."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.sources.windowing import MAX_LINE_BYTES, parse_line
from tests.security import hostile
from tests.security.procs import MIB

HOSTILE_VALUES = [None, True, -1, 0, 10**40, 1e308, float("nan"), float("inf"), "", "x" * 10000, "../../etc",
                  [], {}, [[[[[]]]]], {"a": {"b": {}}}, "\x00", "é", 2**63]  # fmt: skip



def mutations(valid: dict, rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` copies of ``valid`` with one field replaced by a hostile value, deleted, or added."""
    out = []
    for _ in range(n):
        doc, key = dict(valid), sorted(valid)[int(rng.integers(len(valid)))]
        action = int(rng.integers(3))
        if action == 0:
            doc[key] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        elif action == 1:
            del doc[key]
        else:
            doc[f"extra{int(rng.integers(100))}"] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        out.append(json.dumps(doc).encode())
    return out



def json_bombs() -> list[bytes]:
    return [hostile.deep_json(100_000), hostile.deep_json(100_000, b'{"a":'), b"", b"null", b"[]", b"\xff\xfe",
            b"9" * 100_000, b'{"a": ' + b"1e999" + b"}", b"NaN"]  # fmt: skip



def image_cases(rng: np.random.Generator, n: int) -> list[bytes]:
    frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    valid = [cv2.imencode(ext, frame)[1].tobytes() for ext in (".png", ".jpg", ".bmp")]
    cases = [hostile.png_bomb(), hostile.png_header_only(60000, 60000), hostile.jpeg_sof(30000, 30000),
             hostile.bmp_header(20000, -20000), hostile.png_header_only(64, 64), hostile.jpeg_sof(64, 64),
             b"GIF89a" + bytes(100), b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0" + bytes(100)]  # fmt: skip
    for _ in range(n):
        data = bytearray(valid[int(rng.integers(3))])
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        cases.append(bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]))
    return cases



def body_cases() -> list[tuple[str, bytes]]:
    multipart = "multipart/form-data; boundary=b"
    return [("application/json", b) for b in json_bombs()] + [
        ("application/json", b"[" + b",".join([b"[NaN, 1]"] * 4) + b"]"),
        ("application/json", b"[[[1e39, 0, 0]]]"), ("application/json", b'[["a", "b"]]'),
        ("application/json", b"[" * 8_000_000 + b"]" * 8_000_000),  # 16 MB of nesting: at the body limit
        ("application/json", b"0" * (16 * MIB + 1)),  # over the body limit
        ("application/json", b"[" + b"0.5," * (4 * MIB - 1) + b"0]"),  # 16 MiB of numbers: 200+ MiB once parsed
        (multipart, b"--b\r\n\r\n--b--"), (multipart, b"garbage"), ("multipart/form-data", b"x"),
        (multipart, b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n--b--\r\n"),
        ("text/plain", b"x"), ("image/png", b""), ("", b"\x00" * 1000),
    ]  # fmt: skip



def line_cases(rng: np.random.Generator, n: int) -> list[bytes]:
    cases = [hostile.deep_json(60000), hostile.deep_json(12000, b'{"a":'), b"1e999,1,1", b"nan,1,2",
             b'{"x": "walk", "y": [1, 2], "z": null}', b"[" + b"9" * 5000 + b", 1, 2]", b"\xff\xfe\x00garbage",
             b"1,2", b"1,2,3,4", b'{"a": {"b": 1}, "c": 2, "d": 3}']  # fmt: skip
    tokens = [b"1", b"-2.5", b"1e999", b"nan", b"inf", b"x", b"[", b"]", b"{", b"}", b'"a":', b",", b" ", b"null"]
    for _ in range(n):
        cases.append(b"".join(tokens[int(i)] for i in rng.integers(len(tokens), size=int(rng.integers(1, 12)))))
    return [c.replace(b"\n", b" ").replace(b"\r", b" ") for c in cases]



def expected_bad(cases: list[bytes]) -> int:
    def bad(line: bytes) -> bool:
        text = line.strip()
        if not text or text.startswith(b"#"):
            return False
        values = parse_line(line) if len(line) <= MAX_LINE_BYTES else None
        return values is None or values.size != 3

    return sum(bad(c) for c in cases)


WINDOW = b"".join(b"%d,0.5,-0.25\n" % i for i in range(16))



def archive_cases(pkgs: dict, work: Path, bomb_mib: int) -> dict[str, Path]:
    """Hostile archives beside a good signed one: truncated, not a tar, a gzip bomb (the signed manifest and
    signature first, then model.onnx declaring ``bomb_mib`` MiB of zeros), a path-traversal and a symlink member."""
    from edge_runtime.package.store import pack_archive

    good = pack_archive(pkgs["classifier"], work / "good.erpkg")
    raw = good.read_bytes()
    with tarfile.open(good) as tar:
        model_at = tar.getmember("model.onnx").offset
    info = tarfile.TarInfo("model.onnx")
    info.size = bomb_mib * MIB
    contents = {"truncated": raw[: len(raw) // 2], "not a tar": b"x" * 4096,
                "gzip bomb": hostile.gzip_of_zeros_after(raw[:model_at] + info.tobuf(format=tarfile.PAX_FORMAT),
                                                         bomb_mib * MIB, bytes(1024))}  # fmt: skip
    paths = {}
    for name, data in contents.items():
        paths[name] = work / f"{name.replace(' ', '-')}.erpkg"
        paths[name].write_bytes(data)
    for name, member in (("path traversal", "../evil"), ("symlink", "link")):
        p = paths[name] = work / f"{name.replace(' ', '-')}.erpkg"
        shutil.copy(good, p)
        with tarfile.open(p, "a") as tar:
            ti = tarfile.TarInfo(member)
            if name == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(ti, io.BytesIO(b""))
    return paths
