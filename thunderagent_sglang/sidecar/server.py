"""Runs the sidecar: lock the root, probe backends, sweep orphans, serve HTTP until stopped."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys

import uvicorn

from thunderagent_sglang.sidecar import auth, backends
from thunderagent_sglang.sidecar.app import create_app
from thunderagent_sglang.sidecar.errors import SidecarError
from thunderagent_sglang.sidecar.manager import EnvManager
from thunderagent_sglang.sidecar.reporter import ToolReporter
from thunderagent_sglang.sidecar.settings import SidecarSettings

log = logging.getLogger("thunderagent_sglang.sidecar")


def lock_root(root: str):
    """Holds ROOT/lock for the process's life: two sidecars must not share (and sweep) a root."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    handle = open(os.path.join(root, "lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SidecarError(f"another sidecar is running with --root {root}: stop it or give "
                           "another --root") from None
    return handle


def prepare(settings: SidecarSettings) -> tuple[EnvManager, object]:
    lock = lock_root(settings.root)
    found = backends.available(settings)
    for backend in found.values():
        removed = backend.sweep(settings.keep_layers)
        if removed:
            log.warning("swept %d orphans of an earlier run (%s backend): %s", len(removed),
                        backend.name, ", ".join(removed[:10]))
    return EnvManager(settings, found), lock


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise SidecarError(f"cannot listen on {host}:{port} ({exc.strerror}): give another "
                           "--port, or 0 for any free one") from None
    sock.listen(1024)
    return sock


def run(settings: SidecarSettings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sidecar %(levelname)s %(message)s")
    try:
        manager, _lock = prepare(settings)
        token, generated = auth.resolve_token(settings.token_file)
        sock = listen(settings.host, settings.port)
    except SidecarError as exc:
        print(f"thunderagent sidecar: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    with open(os.path.join(settings.root, "url"), "w") as f:
        f.write(url + "\n")
    where = f"generated, in {settings.token_file}" if generated else "from the environment"
    print(f"thunderagent sidecar on {url} (backends: {', '.join(manager.backends)}; "
          f"token {where}{': ' + token if generated else ''})", flush=True)
    app = create_app(manager, token, ToolReporter(settings.server_url))
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
