"""Process and device health: CPU share, RSS, thermal zones, Raspberry Pi throttling.

Read once per metrics period (not per frame). Linux paths are parameters so tests can point them at a fake
sysfs tree; missing files simply leave the field out (a laptop has no get_throttled).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

THERMAL_ROOT = Path("/sys/class/thermal")
THROTTLED_FILE = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")

# Bits of the Raspberry Pi firmware's get_throttled word.
THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def decode_throttled(value: int) -> dict[str, Any]:
    return {"raw": hex(value), **{name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}}


def read_throttled(path: Path = THROTTLED_FILE, use_vcgencmd: bool = True) -> dict[str, Any] | None:
    """The Pi's throttling flags from sysfs, else from ``vcgencmd get_throttled``; None where neither exists."""
    try:
        return decode_throttled(int(path.read_text().strip(), 16))
    except (OSError, ValueError):
        pass
    exe = shutil.which("vcgencmd") if use_vcgencmd else None
    if exe:
        try:
            out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
            return decode_throttled(int(out.strip().split("=", 1)[1], 16))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
    return None


def read_temperatures(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Thermal zone type -> degrees Celsius (sysfs reports millidegrees)."""
    temps: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            name = (zone / "type").read_text().strip() or zone.name
        except OSError:
            name = zone.name
        if name in temps:
            name = f"{name}-{zone.name}"
        temps[name] = round(milli / 1000.0, 1)
    return temps


def read_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except (ImportError, OSError):
            return None


class SystemStats:
    """Call :meth:`sample` once per period: CPU is the process's share since the previous call."""

    def __init__(self, thermal_root: Path = THERMAL_ROOT, throttled_file: Path = THROTTLED_FILE,
                 use_vcgencmd: bool = True) -> None:
        self.thermal_root, self.throttled_file, self.use_vcgencmd = thermal_root, throttled_file, use_vcgencmd
        self._last = (time.monotonic(), self._cpu_seconds())

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        wall = max(now - self._last[0], 1e-9)
        cpu_pct = 100.0 * (cpu - self._last[1]) / wall  # may exceed 100 with several busy threads
        self._last = (now, cpu)
        out: dict[str, Any] = {"cpu_percent": round(cpu_pct, 1), "cpu_count": os.cpu_count()}
        rss = read_rss_bytes()
        if rss is not None:
            out["rss_bytes"] = rss
        temps = read_temperatures(self.thermal_root)
        if temps:
            out["temperature_c"] = temps
        throttled = read_throttled(self.throttled_file, self.use_vcgencmd)
        if throttled is not None:
            out["throttled"] = throttled
        from edge_runtime.monitoring.accelerators import gpu_stats

        gpus = gpu_stats()
        if gpus:  # absent hardware: no field at all, never zeros
            out["gpu"] = gpus
        return out
