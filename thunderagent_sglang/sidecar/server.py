"""Runs the sidecar: lock the root, sweep what dead sidecars left, probe backends, enter a mount
namespace of its own, serve HTTP until stopped.

The private mount namespace holds every workspace mount: when the sidecar dies, even by
``kill -9``, the mounts (and the loop devices under them) go with it; its sandboxes die with it
through their parent-death signal. Connections from sandboxes to the API are refused
(``peers``).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import socket
import sys
import threading

import uvicorn

from thunderagent_sglang.sidecar import auth, backends, peers
from thunderagent_sglang.sidecar.app import create_app
from thunderagent_sglang.sidecar.errors import SidecarError
from thunderagent_sglang.sidecar.local_backend import LocalBackend
from thunderagent_sglang.sidecar.manager import EnvManager
from thunderagent_sglang.sidecar.records import Records
from thunderagent_sglang.sidecar.reporter import ServerReporter
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
    if settings.sweep_dir:
        sweep_siblings(settings.sweep_dir, settings.root, settings.sandbox_uid)
    found = backends.available(settings)
    manager = EnvManager(settings, found, records=Records(settings.root))
    keep_envs, keep_layers = manager.restore()
    for backend in found.values():
        _log_swept(backend.name, backend.sweep(settings.keep_layers | keep_layers, keep_envs))
    default_bases = os.path.join(settings.root, "bases")
    if default_bases in settings.base_roots:
        os.makedirs(default_bases, exist_ok=True)
    if "local" in found:
        private_mounts()
    return manager, lock


def sweep_siblings(sweep_dir: str, own_root: str, sandbox_uid: int) -> None:
    """Sweeps, then removes, every sidecar root under ``sweep_dir`` that no live sidecar holds."""
    for name in sorted(os.listdir(sweep_dir)) if os.path.isdir(sweep_dir) else []:
        root = os.path.join(sweep_dir, name)
        if os.path.realpath(root) == os.path.realpath(own_root) or not os.path.isfile(
                os.path.join(root, "lock")):
            continue
        try:
            handle = lock_root(root)
        except SidecarError:
            continue  # a live sidecar's
        with handle:
            _log_swept(f"local, dead sidecar root {root}", LocalBackend(root, sandbox_uid).sweep())
            shutil.rmtree(root, ignore_errors=True)


def private_mounts() -> None:
    """Moves this process into a mount namespace of its own (mounts private): what it mounts
    vanishes with it. Only while single-threaded (a namespace is per thread); else it says so."""
    if threading.active_count() != 1:
        log.warning("workspace mounts stay in the host's mount namespace (threads already run); "
                    "a crash leaves them to the next start's sweep")
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE,
                                                     None) != 0:
        raise SidecarError(f"cannot make a mount namespace: {os.strerror(ctypes.get_errno())}")


def _log_swept(what: str, removed: list[str]) -> None:
    if removed:
        log.warning("swept %d orphans of an earlier run (%s): %s", len(removed), what,
                    ", ".join(removed[:10]))


_CLONE_NEWNS, _MS_REC, _MS_PRIVATE = 0x00020000, 0x4000, 1 << 18


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
    reporter = ServerReporter(settings.server_url, manager.environments_report)
    app = create_app(manager, token, reporter)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    config.load()
    config.http_protocol_class = refusing_sandboxes(config.http_protocol_class, manager)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def refusing_sandboxes(base: type, manager: EnvManager) -> type:
    """uvicorn's HTTP protocol, closing at once a connection that comes from a sandbox."""
    uid = manager.settings.sandbox_uid

    class RefusingSandboxes(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            networked, root = manager.with_network()
            if not networked:
                return  # no sandbox shares the host's network: none can connect here
            peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
            if peers.from_sandbox(peer, local, uid, root):
                log.warning("refused a connection from a sandbox (%s:%s)", *peer[:2])
                transport.abort()

    return RefusingSandboxes
