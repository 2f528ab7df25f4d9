#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and integration tests
# against real SGLang servers on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# What the sidecar tests use: overlay workspaces on ext4 loop images and namespaces
# (util-linux, e2fsprogs, iproute2), and a real Docker engine with a static busybox for the tiny
# test image (no registry). Without a Docker engine its tests skip and say why. Chromium (Debian's)
# is the browser the live view's tests drive through Playwright.
need=()
for tool in unshare:util-linux setpriv:util-linux losetup:mount mkfs.ext4:e2fsprogs ip:iproute2 dockerd:docker.io busybox:busybox-static chromium:chromium; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[test] installing Debian packages for the sidecar tests: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; }; then
    echo "[test] warning: could not install ${need[*]}; the tests that need them will say so" >&2
  fi
fi
exec "${THUNDERAGENT_VENV:-.venv}/bin/python" -m pytest "$@"
