"""Laptop benchmark: measure model variants (format, precision, backend, threads) side by side.

`edge-runtime bench` (command.py) expands models x backends x thread counts into variants, runs each variant in its
own worker subprocess (worker.py, so peak RSS is per variant), interleaves timed rounds across variants (runner.py),
summarises with spreads (stats.py), describes the machine (machine.py), writes JSON/PNG/HTML (report.py) and checks
against a stored per-device reference (compare.py). Nothing here imports TensorFlow; matplotlib only in report.py.
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class BenchmarkError(EdgeRuntimeError):
    """A benchmark option, reference file or data file is unusable."""


__all__ = ["BenchmarkError"]
