"""Our log lines, visible in every server process.

The plugin runs before SGLang configures logging in its subprocesses, so our
logger gets its own handler in SGLang's format instead of relying on the root.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "thunderagent_sglang"
LEVEL_ENV = "THUNDERAGENT_LOG_LEVEL"


def get_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        logger.addHandler(handler)
        level = os.environ.get(LEVEL_ENV, "INFO").upper()
        logger.setLevel(level if level in logging.getLevelNamesMapping() else logging.INFO)
        logger.propagate = False
    return logger
