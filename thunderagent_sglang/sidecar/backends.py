"""Backend registry: lazy factories, each instance checked by its capability probe."""

from __future__ import annotations

import logging

from thunderagent_sglang.sidecar.envs import Backend
from thunderagent_sglang.sidecar.errors import BackendUnavailable
from thunderagent_sglang.sidecar.settings import SidecarSettings

log = logging.getLogger("thunderagent_sglang.sidecar")
NAMES = ("local", "docker")


def make(name: str, settings: SidecarSettings) -> Backend:
    """A probed backend; raises BackendUnavailable saying what is missing."""
    if name == "local":
        from thunderagent_sglang.sidecar.local_backend import LocalBackend
        backend: Backend = LocalBackend(settings.root, settings.sandbox_uid)
    elif name == "docker":
        from thunderagent_sglang.sidecar.docker_backend import DockerBackend
        backend = DockerBackend(settings.root, settings.sandbox_uid)
    else:
        raise BackendUnavailable(f"unknown backend {name!r}: use one of {', '.join(NAMES)}")
    backend.probe()
    return backend


def available(settings: SidecarSettings) -> dict[str, Backend]:
    """The default backend (its probe failure is fatal) and every other one that probes fine."""
    backends = {settings.backend: make(settings.backend, settings)}
    for name in NAMES:
        if name not in backends:
            try:
                backends[name] = make(name, settings)
            except BackendUnavailable as exc:
                log.info("backend %s is off: %s", name, exc)
    return backends
