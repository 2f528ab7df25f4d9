"""``python -m thunderagent_sglang.router --backends URL1,URL2 [--port 30010]``."""

from __future__ import annotations

import logging
import sys

import uvicorn

from thunderagent_sglang.router.app import build_app
from thunderagent_sglang.router.core import Router
from thunderagent_sglang.router.replicas import refused_backends
from thunderagent_sglang.router.settings import SettingsError, from_args


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_args(argv)
    except (SettingsError, ValueError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    refused = refused_backends(settings)
    if refused:
        for message in refused:
            print(f"router: {message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("thunderagent.router").info(
        "router on http://%s:%d in front of %s (poll every %.2f s, migration %s)",
        settings.host, settings.port,
        ", ".join(f"{n}={u}" for n, u in zip(settings.names, settings.backends))
        or "no replica yet (they register through PUT /router/backends/NAME)",
        settings.poll_interval_s,
        "on" if settings.migration else "off")
    uvicorn.run(build_app(Router(settings)), host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False, timeout_keep_alive=75)
    return 0


if __name__ == "__main__":
    sys.exit(main())
