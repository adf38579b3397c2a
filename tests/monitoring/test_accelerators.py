"""GPU figures: tegrastats lines of each Jetson generation parsed, Jetson sysfs load read, and absent hardware
(this machine: no NVML GPU, no tegrastats) reported as absent, never as zero."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from edge_runtime.monitoring.accelerators import families, gpu_stats, parse_tegrastats, read_jetson_load
from edge_runtime.monitoring.system import SystemStats

LINES = [x for x in (Path(__file__).parent / "data" / "tegrastats.txt").read_text().splitlines()
         if x and not x.startswith("#")]
MB = 1024 * 1024


def test_tegrastats_lines_of_each_generation_give_load_memory_temperature_and_power_where_printed():
    nano, tx2, xavier, orin_nano, agx_orin = (parse_tegrastats(x) for x in LINES)
    assert nano == {"gpu": "jetson-gpu", "source": "tegrastats", "utilization_ratio": 0.37,
                    "memory_used_bytes": 2145 * MB, "memory_total_bytes": 3964 * MB, "shared_memory": True,
                    "temperature_c": 43.0, "power_w": 0.48}
    assert tx2["utilization_ratio"] == 0.0 and tx2["temperature_c"] == 29.0 and tx2["power_w"] == 0.145
    # Xavier: GR3D_FREQ with a bracketed frequency; its only rail with GPU in the name also feeds CPU and CV
    assert xavier["utilization_ratio"] == 0.12 and xavier["temperature_c"] == 37.5 and "power_w" not in xavier
    # Orin Nano prints no GPU temperature: the field is absent, not 0
    assert orin_nano["utilization_ratio"] == 0.99 and "temperature_c" not in orin_nano
    assert orin_nano["power_w"] == 0.042 and orin_nano["memory_total_bytes"] == 1999 * MB
    # AGX Orin: lower-case sensors, gpu@-256C is tegrastats' mark for a missing sensor
    assert agx_orin["memory_used_bytes"] == 3456 * MB and "temperature_c" not in agx_orin
    assert "power_w" not in agx_orin  # VDD_GPU_SOC feeds the GPU and the SoC together
    assert parse_tegrastats("RAM 100/200MB (lfb 1x4MB) CPU [1%@100]") is None


def test_jetson_sysfs_load_is_per_mille(tmp_path):
    f = tmp_path / "load"
    f.write_text("537\n")
    assert read_jetson_load((tmp_path / "missing", f)) == {"gpu": "jetson-gpu", "source": "sysfs",
                                                          "utilization_ratio": 0.537}
    assert read_jetson_load((tmp_path / "missing",)) is None


def test_families_only_for_fields_a_gpu_reports():
    stats = [parse_tegrastats(LINES[3])]
    names = {f.name for f in families(GaugeMetricFamily, stats)}
    assert names == {"edge_gpu_utilization_ratio", "edge_gpu_memory_used_bytes", "edge_gpu_memory_total_bytes",
                     "edge_gpu_power_watts"}  # no temperature family: Orin Nano prints none


def test_no_gpu_here_means_no_gpu_figures_at_all():
    assert gpu_stats() == []
    assert list(families(GaugeMetricFamily)) == []
    assert "gpu" not in SystemStats().sample()
