"""``python -m thunderagent_sglang.sidecar --help``"""

import sys

from thunderagent_sglang.sidecar.server import run
from thunderagent_sglang.sidecar.settings import from_args

if __name__ == "__main__":
    sys.exit(run(from_args()))
