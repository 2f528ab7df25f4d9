"""The fleet's Ray actors. ``ReplicaActor`` launches our server on its node and exits (so Ray
restarts it, up to the fleet's bound) when the server dies; ``RouterActor`` runs the router,
registers replicas with it as they (re)start and counts their starts."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import ray

from thunderagent_sglang.cluster import spec as fleet_spec
from thunderagent_sglang.cluster.process import Child, pick_port, wait_answering

log = logging.getLogger("thunderagent.cluster")
WATCH_INTERVAL_S = 1.0


def _node() -> tuple[str, str]:
    return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()


def _listen(spec: fleet_spec.FleetSpec, node_ip: str, preferred: int) -> tuple[str, int, str]:
    """(address to bind, port, URL others reach it at) on this node."""
    bind = spec.host or node_ip
    port = pick_port(bind, preferred)
    return bind, port, fleet_spec.url_for(node_ip if bind in ("0.0.0.0", "::") else bind, port)


def _watch(owner, what: str) -> None:
    """Exit the actor's process when its child exits unasked: Ray then restarts the actor."""
    def loop():
        while True:
            time.sleep(WATCH_INTERVAL_S)
            code = owner.child.exited()
            if code is not None and not owner.stopping:
                log.error("%s: %s exited with status %s; exiting so that Ray restarts this "
                          "replica. The end of %s:\n%s", owner.name, what, code,
                          owner.child.log_path, owner.child.log_tail())
                os._exit(1)
    threading.Thread(target=loop, name=f"watch-{what}", daemon=True).start()


class ReplicaActor:
    def __init__(self, spec: fleet_spec.FleetSpec, index: int):
        self.stopping = False
        self.name = fleet_spec.replica_name(spec.name, index)
        self.node_ip, self.node_id = _node()
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        bind, port, self.url = _listen(spec, self.node_ip, spec.replica_port + index)
        started = time.monotonic()
        self.child = Child(fleet_spec.server_command(sys.executable, spec, bind, port),
                           Path(spec.log_dir) / spec.name / f"replica-{index}.log")
        wait_answering(self.child, f"{self.url}/health", spec.start_timeout_s,
                       headers=spec.bearer())
        self.ready_s = round(time.monotonic() - started, 1)
        self.started_at = time.time()
        _watch(self, "its server")
        self._register(spec.name)

    def _register(self, fleet: str) -> None:
        """Tell the router (through its actor) where this replica now is; the router actor
        also asks every replica at its own start, so a miss here is not fatal."""
        try:
            router = ray.get_actor(fleet_spec.router_name(fleet), namespace=fleet_spec.NAMESPACE)
            ray.get(router.register.remote(self.name, self.url), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the router may be starting or gone
            log.warning("%s: could not register with the router yet (%s)", self.name, exc)

    def info(self) -> dict:
        return {"name": self.name, "url": self.url, "node_ip": self.node_ip,
                "node_id": self.node_id, "server_pid": self.child.pid,
                "actor_pid": os.getpid(), "restarted": self.restarted,
                "ready_s": self.ready_s, "up_s": round(time.time() - self.started_at, 1),
                "log": str(self.child.log_path), "alive": self.child.exited() is None}

    def stop(self) -> bool:
        self.stopping = True
        self.child.stop()
        return True


class RouterActor:
    def __init__(self, spec: fleet_spec.FleetSpec, admin_key: str):
        self.stopping = False
        self.spec = spec
        self.name = fleet_spec.router_name(spec.name)
        self.admin_key = admin_key
        self.node_ip, self.node_id = _node()
        self.starts: dict[str, int] = {}
        self.urls = self._replicas_up()
        bind, port, self.url = _listen(spec, self.node_ip, spec.router_port)
        self.child = Child(
            fleet_spec.router_command(sys.executable, spec, self.urls, bind, port),
            Path(spec.log_dir) / spec.name / "router.log",
            env=fleet_spec.router_env(spec, admin_key))
        wait_answering(self.child, f"{self.url}/health", 60, any_status=True)
        self.started_at = time.time()
        _watch(self, "the router")

    def _replicas_up(self) -> dict[str, str]:
        """The replicas already serving (after a restart of this actor): name -> URL."""
        handles = {}
        for i in range(self.spec.replicas):
            name = fleet_spec.replica_name(self.spec.name, i)
            try:
                handles[name] = ray.get_actor(name, namespace=fleet_spec.NAMESPACE).info.remote()
            except ValueError:
                continue  # not created yet
        ready, _ = ray.wait(list(handles.values()), num_returns=len(handles), timeout=5)
        out = {}
        for name, ref in handles.items():
            if ref in ready:
                try:
                    out[name] = ray.get(ref)["url"]
                except Exception:  # noqa: BLE001 - dead or restarting: it registers itself
                    continue
        return out

    def register(self, name: str, url: str) -> dict:
        """A replica (re)started at ``url``: the router uses it from now on."""
        self.starts[name] = self.starts.get(name, 0) + 1
        self.urls[name] = url
        response = httpx.put(f"{self.url}/router/backends/{name}", json={"url": url},
                             headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"the router refused {name} at {url}: HTTP "
                               f"{response.status_code} {response.text[:300]}")
        return response.json()

    def view(self) -> dict:
        """The router's ``GET /router/replicas`` (with the client key the servers have)."""
        try:
            return httpx.get(f"{self.url}/router/replicas", timeout=10,
                             headers=self.spec.bearer()).json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"replicas": [], "error": f"{type(exc).__name__}: {exc}"}

    def info(self) -> dict:
        return {"name": self.name, "url": self.url, "node_ip": self.node_ip,
                "node_id": self.node_id, "pid": self.child.pid, "starts": dict(self.starts),
                "replicas": dict(self.urls), "log": str(self.child.log_path),
                "alive": self.child.exited() is None}

    def stop(self) -> bool:
        self.stopping = True
        self.child.stop(grace_s=10)
        return True
