"""``up``, ``status`` and ``down``: the fleet's actors on a Ray cluster, driven from the
command line (``__main__``)."""

from __future__ import annotations

import logging
import secrets
import time

import httpx
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from thunderagent_sglang.cluster import local_ray
from thunderagent_sglang.cluster import spec as fleet_spec
from thunderagent_sglang.cluster.actors import ReplicaActor, RouterActor

NS = fleet_spec.NAMESPACE


class ClusterError(RuntimeError):
    """What went wrong, said for the user (no stack trace)."""


def _actor(name: str):
    try:
        return ray.get_actor(name, namespace=NS)
    except ValueError:
        return None


def up(spec: fleet_spec.FleetSpec, address: str | None, say=print) -> dict:
    started_at = time.monotonic()
    gcs, started_ray = local_ray.connect(address, start_if_none=True)
    if started_ray:
        say(f"started a local Ray cluster at {gcs}")
    if _actor(fleet_spec.router_name(spec.name)) is not None:
        raise ClusterError(f"fleet {spec.name!r} is already up on this cluster: run "
                           f"'cluster down --name {spec.name}' first, or pick another --name")
    local_ray.write_state(spec.log_dir, spec.name, {"address": gcs, "started_ray": started_ray})
    try:
        return _start(spec, gcs, started_ray, started_at, say)
    except BaseException:
        say("start-up failed; stopping what was started")
        down(spec.name, gcs, spec.log_dir, say=say, connected=True)
        raise


def _start(spec, gcs, started_ray, started_at, say) -> dict:
    resources = ray.cluster_resources()
    bundle = fleet_spec.bundle(spec, resources.get("GPU", 0))
    group = placement_group([bundle] * spec.replicas, strategy=spec.strategy,
                            name=fleet_spec.group_name(spec.name), lifetime="detached")
    try:
        ray.get(group.ready(), timeout=60)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(
            f"the cluster cannot place {spec.replicas} replica(s) of {bundle} ({spec.strategy}): "
            f"it has {ray.available_resources()} free. Lower --cpus-per-replica or "
            "--gpus-per-replica, or add nodes") from None
    # Ray warns that a restartable actor in a placement group cannot restart once the group
    # is removed: 'down' kills the actors before it removes the group.
    logging.getLogger("ray.actor").setLevel(logging.ERROR)
    admin_key = secrets.token_urlsafe(24)
    here = ray.get_runtime_context().get_node_id()
    router = ray.remote(RouterActor).options(
        name=fleet_spec.router_name(spec.name), namespace=NS, lifetime="detached",
        max_restarts=-1, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote(spec, admin_key)
    router_info = _created(router, 120, "the router")
    say(f"router up at {router_info['url']}")
    replicas = [
        ray.remote(ReplicaActor).options(
            name=fleet_spec.replica_name(spec.name, i), namespace=NS, lifetime="detached",
            max_restarts=spec.max_restarts, max_task_retries=0,
            num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=i),
        ).remote(spec, i)
        for i in range(spec.replicas)]
    infos = [_created(actor, spec.start_timeout_s + 60, fleet_spec.replica_name(spec.name, i))
             for i, actor in enumerate(replicas)]
    for info in infos:
        say(f"{info['name']} up at {info['url']} on node {info['node_ip']} "
            f"(server ready in {info['ready_s']} s)")
    _wait_router_sees(router_info["url"], spec.replicas, 120)
    took = round(time.monotonic() - started_at, 1)
    state = {"address": gcs, "started_ray": started_ray, "url": router_info["url"],
             "replicas": spec.replicas, "up_s": took}
    local_ray.write_state(spec.log_dir, spec.name, state)
    say(f"fleet {spec.name!r}: {spec.replicas} replica(s) ready in {took} s")
    return state


def _created(actor, timeout_s: float, what: str) -> dict:
    try:
        return ray.get(actor.info.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"{what} did not start in {timeout_s:g} s") from None
    except ray.exceptions.RayActorError as exc:
        raise ClusterError(f"{what} could not start: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    text = str(exc)
    marker = "RuntimeError: "
    return text[text.rfind(marker) + len(marker):] if marker in text else text


def _wait_router_sees(url: str, replicas: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).json().get("ready_replicas") == replicas:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise ClusterError(f"the router at {url} did not see {replicas} ready replica(s) in "
                       f"{timeout_s:g} s")


def status(fleet: str, address: str | None, log_dir: str) -> dict:
    """The router and each replica: node, URL, health (the router's view), programs, starts."""
    _connect_existing(fleet, address, log_dir)
    router = _actor(fleet_spec.router_name(fleet))
    if router is None:
        raise ClusterError(f"no fleet {fleet!r} runs on this cluster")
    router_info = ray.get(router.info.remote(), timeout=30)
    view = ray.get(router.view.remote(), timeout=30)
    by_url = {r["replica"]: r for r in view.get("replicas", [])}
    replicas = []
    for name in _replica_names(fleet, router_info):
        actor = _actor(name)
        row = {"name": name, "state": "missing"}
        if actor is not None:
            ready, _ = ray.wait([ref := actor.info.remote()], timeout=5)
            row = {"name": name, "state": "starting or restarting"}
            if ready:
                try:
                    row = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:
                    pass  # restarting
                except ray.exceptions.RayError as exc:
                    row = {"name": name, "state": f"dead: {_cause(exc)[:300]}"}
        seen = by_url.get(row.get("url"), {})
        row.update(state=row.get("state") or ("ready" if seen.get("ready") else "not ready"),
                   programs=seen.get("programs"), calls=seen.get("calls"),
                   restarts=max(0, router_info["starts"].get(name, 0) - 1))
        replicas.append(row)
    return {"fleet": fleet, "url": router_info["url"], "router": router_info,
            "replicas": replicas, "counters": view.get("counters", {})}


def _replica_names(fleet: str, router_info: dict) -> list[str]:
    names = set(router_info.get("replicas", {}))
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NS and entry["name"].startswith(f"{fleet}-replica-"):
            names.add(entry["name"])
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


def _connect_existing(fleet: str, address: str | None, log_dir: str) -> dict:
    state = local_ray.read_state(log_dir, fleet)
    try:
        local_ray.connect(address or state.get("address"), start_if_none=False)
    except (RuntimeError, ConnectionError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster of fleet {fleet!r}: {exc}") from None
    return state


def down(fleet: str, address: str | None, log_dir: str, say=print,
         connected: bool = False) -> dict:
    """Stop the fleet's router and replicas (their servers first), remove its placement group,
    and stop the local Ray cluster if ``up`` started it and nothing else runs there."""
    state = local_ray.read_state(log_dir, fleet)
    if not connected:
        _connect_existing(fleet, address, log_dir)
    names = [fleet_spec.router_name(fleet)] + [
        e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == NS and e["name"].startswith(f"{fleet}-replica-")]
    stopped = []
    for name in names:
        actor = _actor(name)
        if actor is None:
            continue
        try:
            ray.get(actor.stop.remote(), timeout=40)
        except Exception as exc:  # noqa: BLE001 - dead or hung: killed below either way
            say(f"{name}: no clean stop ({type(exc).__name__}); killing it")
        ray.kill(actor, no_restart=True)
        stopped.append(name)
    _remove_group(fleet)
    left = _wait_gone(set(stopped), 30)
    if left:
        raise ClusterError(f"these actors are still alive after being killed: {sorted(left)}")
    say(f"fleet {fleet!r}: stopped {len(stopped)} actor(s)" + (
        f" ({', '.join(stopped)})" if stopped else ""))
    others = [e for e in ray.util.list_named_actors(all_namespaces=True)]
    stopped_ray = False
    if state.get("started_ray"):
        if others:
            say(f"leaving the local Ray cluster running: {len(others)} other named actor(s) use it")
        else:
            ray.shutdown()
            stopped_ray = local_ray.stop_local()
            say("stopped the local Ray cluster that 'up' started" if stopped_ray
                else "could not stop the local Ray cluster: run 'ray stop'")
    local_ray.state_path(log_dir, fleet).unlink(missing_ok=True)
    return {"stopped": stopped, "stopped_ray": stopped_ray}


def _remove_group(fleet: str) -> None:
    from ray.util import get_placement_group

    try:
        remove_placement_group(get_placement_group(fleet_spec.group_name(fleet)))
    except ValueError:
        pass  # none: start-up failed before it, or already removed


def _wait_gone(names: set[str], timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                if e["namespace"] == NS} & names
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
