#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and integration tests
# against real SGLang servers on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${THUNDERAGENT_VENV:-.venv}/bin/python" -m pytest "$@"
