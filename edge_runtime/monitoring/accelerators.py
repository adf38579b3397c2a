"""GPU and accelerator figures where the hardware exists: NVIDIA GPUs through NVML (``pynvml``, from the
``nvidia-ml-py`` package), Jetson boards through ``tegrastats`` (or the sysfs GPU load file).

Each reader returns a list of per-GPU dicts, empty where the hardware or library is absent: absent hardware is
reported as absent (no series, no field), never as zero. Keys: ``gpu`` (a name), ``source``,
``utilization_ratio`` (0..1), ``memory_used_bytes``, ``memory_total_bytes``, ``temperature_c``; a reader leaves
out what its hardware does not tell.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JETSON_LOAD_FILES = (Path("/sys/devices/gpu.0/load"), Path("/sys/devices/platform/gpu.0/load"),
                     Path("/sys/devices/platform/17000000.ga10b/load"),
                     Path("/sys/devices/platform/17000000.gv11b/load"))

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# GPU-only rails (VDD_CPU_GPU_CV on Xavier, VDD_GPU_SOC on AGX Orin are shared rails: not GPU figures).
_POWER = re.compile(r"\b(VDD_GPU|VDD_SYS_GPU|POM_5V_GPU) (\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> dict[str, Any] | None:
    """One ``tegrastats`` line -> the Jetson GPU's figures (None if the line has no GPU load field).

    The GPU shares the board's RAM, so memory figures are the RAM's (``shared_memory``: True). A temperature of
    -256 C is tegrastats' mark for a sensor that is not there and is left out."""
    gr3d = _GR3D.search(line)
    if gr3d is None:
        return None
    out: dict[str, Any] = {"gpu": "jetson-gpu", "source": "tegrastats",
                           "utilization_ratio": int(gr3d.group(1)) / 100.0}
    ram = _RAM.search(line)
    if ram:
        out["memory_used_bytes"] = int(ram.group(1)) * 1024 * 1024
        out["memory_total_bytes"] = int(ram.group(2)) * 1024 * 1024
        out["shared_memory"] = True
    temps = {name: float(t) for name, t in _TEMP.findall(line) if float(t) > -256}
    gpu_temp = temps.get("GPU", temps.get("gpu"))
    if gpu_temp is not None:
        out["temperature_c"] = gpu_temp
    power = _POWER.search(line)
    if power:
        out["power_w"] = int(power.group(2)) / 1000.0
    return out


def read_jetson_load(files: tuple[Path, ...] = JETSON_LOAD_FILES) -> dict[str, Any] | None:
    """GPU load from the Jetson sysfs file (0..1000), where there is one."""
    for f in files:
        try:
            return {"gpu": "jetson-gpu", "source": "sysfs", "utilization_ratio": int(f.read_text().strip()) / 1000.0}
        except (OSError, ValueError):
            continue
    return None


class TegrastatsReader:
    """Runs ``tegrastats --interval MS`` on a daemon thread and keeps the newest parsed line."""

    def __init__(self, exe: str, interval_ms: int = 1000) -> None:
        self.latest: dict[str, Any] | None = None
        self._proc = subprocess.Popen([exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE,  # noqa: S603
                                      stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, name="tegrastats", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parsed = parse_tegrastats(line)
            if parsed is not None:
                self.latest = parsed

    def close(self) -> None:
        self._proc.terminate()


def read_nvml() -> list[dict[str, Any]]:
    """Every NVIDIA GPU NVML sees ([] without pynvml, the driver or a GPU)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - pynvml.NVMLError: no driver or no GPU
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"gpu": f"{i}:{name.decode() if isinstance(name, bytes) else name}", "source": "nvml",
                        "utilization_ratio": pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                        "memory_used_bytes": int(mem.used), "memory_total_bytes": int(mem.total),
                        "temperature_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))})
    except Exception as exc:  # noqa: BLE001 - a GPU that fails a query is left out, not reported as zero
        log.debug("NVML query failed: %s", exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110
            pass
    return out


_tegrastats: TegrastatsReader | None = None
_lock = threading.Lock()


def gpu_stats() -> list[dict[str, Any]]:
    """Figures of every GPU found here: NVML GPUs, else the Jetson GPU (tegrastats, else sysfs); [] if none."""
    global _tegrastats
    found = read_nvml()
    if found:
        return found
    exe = shutil.which("tegrastats")
    if exe:
        with _lock:
            if _tegrastats is None:
                try:
                    _tegrastats = TegrastatsReader(exe)
                except OSError:
                    exe = None
        if _tegrastats is not None and _tegrastats.latest is not None:
            return [_tegrastats.latest]
    load = read_jetson_load()
    return [load] if load is not None else []


_FAMILIES = (("utilization_ratio", "edge_gpu_utilization_ratio", "GPU busy share (0..1)."),
             ("memory_used_bytes", "edge_gpu_memory_used_bytes", "GPU memory in use (Jetson: the shared RAM)."),
             ("memory_total_bytes", "edge_gpu_memory_total_bytes", "GPU memory size (Jetson: the shared RAM)."),
             ("temperature_c", "edge_gpu_temperature_celsius", "GPU temperature."),
             ("power_w", "edge_gpu_power_watts", "GPU power rail draw (Jetson)."))


def families(gauge: Any, stats: list[dict[str, Any]] | None = None) -> Iterator[Any]:
    """Prometheus gauge families of ``stats`` (default: read now); a family only where some GPU has the field."""
    stats = gpu_stats() if stats is None else stats
    for key, name, doc in _FAMILIES:
        rows = [s for s in stats if s.get(key) is not None]
        if rows:
            fam = gauge(name, doc, labels=["gpu", "source"])
            for s in rows:
                fam.add_metric([s["gpu"], s["source"]], float(s[key]))
            yield fam
