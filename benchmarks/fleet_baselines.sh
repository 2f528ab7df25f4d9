#!/usr/bin/env bash
# Installs the fleet benchmark's baselines into .bench-env/ (not into the project's venv):
#   - SGLang's gateway, smg, pinned;
#   - the published ThunderAgent proxy, from its source at a pinned commit, as its README says
#     (pip install -e); its examples/ folder (large files) is left out.
# Usage: benchmarks/fleet_baselines.sh [PROXY_SOURCE]
#   PROXY_SOURCE: a git URL or a local git directory of ThunderAgent-org/ThunderAgent
#   (default: its public repository).
set -euo pipefail
cd "$(dirname "$0")/.."
SMG_VERSION=1.13.0
PROXY_COMMIT=a7eef77a0e6dc4015efec5465e13a4923f2c8b19
PROXY_SOURCE=${1:-https://github.com/ThunderAgent-org/ThunderAgent}
PY=${PYTHON:-python3}

mkdir -p .bench-env
[ -x .bench-env/smg/bin/smg ] || {
  "$PY" -m venv .bench-env/smg
  .bench-env/smg/bin/pip install -q "smg==$SMG_VERSION"
}
if [ ! -d .bench-env/ThunderAgent-src/.git ]; then
  git clone -q --no-checkout "$PROXY_SOURCE" .bench-env/ThunderAgent-src
  git -C .bench-env/ThunderAgent-src sparse-checkout set --no-cone '/*' '!/examples/'
fi
git -C .bench-env/ThunderAgent-src checkout -q -f "$PROXY_COMMIT"
[ -x .bench-env/proxy/bin/thunderagent ] || {
  "$PY" -m venv .bench-env/proxy
  .bench-env/proxy/bin/pip install -q -e .bench-env/ThunderAgent-src
}
echo "smg: $(.bench-env/smg/bin/pip show smg | awk '/^Version/{print $2}'); proxy: $(git -C .bench-env/ThunderAgent-src rev-parse HEAD)"
