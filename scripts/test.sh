#!/usr/bin/env bash
# The whole test suite: system packages the tests need (a real mosquitto, PostgreSQL, headless Chromium, promtool,
# debootstrap for the arm64 check), the venv, then pytest. Fails when anything fails, and when no test ran (pytest exit code 5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need=()
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v promtool >/dev/null || need+=(prometheus)
command -v espeak-ng >/dev/null || need+=(espeak-ng)  # real speech for the audio models the converter tests bring
if ((${#need[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "==> installing system packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

bash "$root/scripts/bootstrap.sh"
# Two workers (pytest-xdist): most tests wait on real processes (agents, brokers, databases), so two overlap well on
# 2 cores; tests/conftest.py keeps folders with expensive session fixtures on one worker. EDGE_RUNTIME_TEST_WORKERS=0
# (or -n 0 after the script) runs in one process.
exec "${EDGE_RUNTIME_VENV:-$root/.venv}/bin/python" -m pytest -n "${EDGE_RUNTIME_TEST_WORKERS:-2}" --dist loadgroup "$@"
