"""``python -m thunderagent_sglang.launch_server [every sglang flag] [--thunderagent-* flags]``."""

import sys

if __name__ == "__main__":
    from thunderagent_sglang.engine.launch import main

    sys.exit(main())
