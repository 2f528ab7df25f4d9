#!/usr/bin/env bash
# Set up (if needed) and serve: on the embedded demo model unless --model-path is
# given, on SGLang's CPU engine when there is no GPU. Extra arguments go to
# `python -m thunderagent_sglang.launch_server` (every SGLang flag plus ours).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${THUNDERAGENT_VENV:-.venv}/bin/python" -m thunderagent_sglang.launch_server "$@"
