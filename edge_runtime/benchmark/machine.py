"""Describe the machine a benchmark ran on: CPU, ISA features, governor, memory, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path

from edge_runtime.benchmark.schema import MachineInfo

# Flags that change int8/float inference speed. x86: AVX2/AVX-512/VNNI/AMX; arm: NEON (asimd), dot product
# (asimddp), int8 matrix multiply (i8mm), half precision (fphp), SVE.
_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",
)
_LIBRARIES = ("numpy", "onnxruntime", "ai-edge-litert", "onnx", "opencv-python-headless", "edge-runtime")


def _cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(CPU model, relevant ISA flags in a fixed order) from /proc/cpuinfo text."""
    model, flags = _cpuinfo(text)
    return model, [f for f in _ISA_FLAGS if f in flags]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _physical_cores(text: str) -> int | None:
    pairs = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))
    return len(pairs) or None


def _arm_model() -> str:
    # Raspberry Pi / Jetson: the device tree names the board; /proc/cpuinfo on arm64 often has no model name.
    dt = _read("/proc/device-tree/model")
    return dt.rstrip("\x00") if dt else ""


def _frequency_mhz(cpuinfo_text: str) -> float | None:
    cur = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if cur and cur.isdigit():
        return int(cur) / 1000.0
    m = re.search(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo_text)
    return float(m.group(1)) if m else None


def _memory_bytes() -> int | None:
    text = _read("/proc/meminfo") or ""
    m = re.search(r"MemTotal:\s*(\d+) kB", text)
    return int(m.group(1)) * 1024 if m else None


def library_versions(names: tuple[str, ...] = _LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that decide the figures (absent ones left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def describe_machine(extra_libraries: tuple[str, ...] = ()) -> MachineInfo:
    """Collect a MachineInfo for this host (Linux first; other systems get what platform tells).

    `extra_libraries` adds distributions whose versions matter to a particular benchmark (e.g. tensorflow).
    """
    text = _read("/proc/cpuinfo") or ""
    model, isa = parse_cpuinfo(text)
    model = model or _arm_model() or platform.processor() or "unknown CPU"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return MachineInfo(
        cpu_model=model,
        arch=platform.machine(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=_physical_cores(text),
        usable_cores=usable,
        isa_features=isa,
        governor=_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        frequency_mhz=_frequency_mhz(text),
        memory_bytes=_memory_bytes(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        libraries=library_versions(_LIBRARIES + extra_libraries),
        load_average=load,
    )


def machine_summary(info: MachineInfo | None = None) -> str:
    """One line for a benchmark script's header: CPU, cores, ISA, governor, load, OS, Python, library versions."""
    info = info or describe_machine()
    libs = ", ".join(f"{name} {version}" for name, version in info.libraries.items())
    return f"{info.describe()}; {info.system}, Python {info.python}; {libs}"


def machine_slug(info: MachineInfo) -> str:
    """A file-name-safe default reference name, e.g. 'x86_64-amd-epyc-2c'."""
    name = re.sub(r"[^a-z0-9]+", "-", info.cpu_model.lower()).strip("-")[:40] or "cpu"
    return f"{info.arch}-{name}-{info.usable_cores or info.logical_cores}c"
