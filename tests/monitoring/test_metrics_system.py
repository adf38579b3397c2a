"""Latency histograms, quality counters and system readings."""

from __future__ import annotations

import time

import numpy as np

from edge_runtime.monitoring.metrics import LatencyHistogram
from edge_runtime.monitoring.system import SystemStats, decode_throttled, read_temperatures, read_throttled


def test_histogram_quantiles_match_numpy_within_one_bucket():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=1.5, sigma=0.6, size=20000)
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    for q in (0.5, 0.9, 0.99):
        exact = float(np.percentile(values, q * 100))
        assert abs(h.quantile(q) - exact) / exact < 0.15  # buckets are 15% wide
    assert h.count == 20000 and abs(h.total - values.sum()) < 1e-6 * values.sum()


def test_period_histogram_covers_only_new_observations():
    h = LatencyHistogram()
    for v in (1.0, 2.0, 3.0):
        h.add(v)
    mark = h.copy()
    h.add(100.0)
    assert h.since(mark).count == 1 and 80 < h.since(mark).quantile(0.5) <= 100.0


def test_thermal_zones_and_pi_throttling_are_read_from_sysfs_files(tmp_path):
    for i, (kind, milli) in enumerate((("cpu-thermal", 61234), ("gpu-thermal", 55000))):
        z = tmp_path / "thermal" / f"thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(f"{milli}\n")
    (tmp_path / "get_throttled").write_text("50005\n")  # under-voltage now, throttled now, both occurred before
    assert read_temperatures(tmp_path / "thermal") == {"cpu-thermal": 61.2, "gpu-thermal": 55.0}
    t = read_throttled(tmp_path / "get_throttled", use_vcgencmd=False)
    assert t["under_voltage"] and t["throttled"] and t["under_voltage_occurred"] and not t["arm_freq_capped"]
    assert decode_throttled(0)["raw"] == "0x0"
    stats = SystemStats(tmp_path / "thermal", tmp_path / "get_throttled", use_vcgencmd=False)
    start = time.process_time()
    while time.process_time() - start < 0.1:  # burn 100 ms of CPU: more than the kernel's 10 ms accounting tick
        sum(i * i for i in range(10000))
    s = stats.sample()
    assert s["cpu_percent"] > 0 and s["rss_bytes"] > 10 * 2**20 and s["temperature_c"]["cpu-thermal"] == 61.2


def test_no_thermal_or_throttle_files_leave_the_fields_out(tmp_path):
    s = SystemStats(tmp_path / "none", tmp_path / "none2", use_vcgencmd=False).sample()
    assert "temperature_c" not in s and "throttled" not in s
