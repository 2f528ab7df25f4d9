#!/usr/bin/env bash
# Set up everything ThunderAgent-SGLang needs on a fresh machine; safe to run twice.
#   Debian packages (GNU patch), a virtual environment in .venv with SGLang 0.5.23
#   and this package (editable, with its test tools), our SGLang source patches,
#   and the embedded demo model (built locally; no model hub is needed).
# Environment: PYTHON (default python3), THUNDERAGENT_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${THUNDERAGENT_VENV:-$ROOT/.venv}
log() { echo "[setup] $*"; }

missing=()
command -v patch >/dev/null 2>&1 || missing+=(patch)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "[setup] error: Python 3.10 or newer is needed (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating the virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi

# pip runs again only when pyproject.toml changed since the last good install.
stamp="$VENV/.thunderagent-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || ! "$VENV/bin/python" -c 'import thunderagent_sglang' 2>/dev/null; then
  log "installing SGLang 0.5.23 and thunderagent-sglang (first time: several minutes, ~11 GB)"
  start=$(date +%s)
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,ray,examples]"
  rm -f "$VENV"/.thunderagent-installed-*
  touch "$stamp"
  log "pip install took $(( $(date +%s) - start )) s"
else
  log "packages already installed (pyproject.toml unchanged)"
fi

log "applying SGLang source patches"
"$VENV/bin/python" -m thunderagent_sglang.patches apply
log "building (or reusing) the demo model"
"$VENV/bin/python" -m thunderagent_sglang.demo_model
log "done"
