#!/usr/bin/env bash
# Quick start: set up, then build the demo face-detection package from a real pretrained model (BlazeFace, shipped
# in a PyPI package) and run the offline pipeline on a clip made from real photos.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "${EDGE_RUNTIME_VENV:-$root/.venv}/bin/edge-runtime" demo "$@"
