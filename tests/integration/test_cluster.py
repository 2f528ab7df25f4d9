"""The fleet on a local Ray cluster (one shared fleet for every case, started by
``cluster up`` itself, which also starts Ray): programs spread over both replicas through the
one printed URL; a killed replica actor, and a replica whose server dies, restarted by Ray and
used again, with no call lost or doubled; ``cluster down`` leaves no process, port or actor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import psutil
import pytest
import ray
import requests

from tests.integration.server import REPO, wait_until

pytestmark = pytest.mark.server
FLEET = "citest"
SERVER_ARGS = ["--max-total-tokens", "2048"]


@dataclass
class Fleet:
    url: str
    log_dir: Path
    up_s: float
    started_ray: bool


def cluster(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thunderagent_sglang.cluster", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def status(fleet: Fleet) -> dict:
    done = cluster("status", "--name", FLEET, "--log-dir", str(fleet.log_dir), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def quiet_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports below Linux's ephemeral range (32768).
    A port from that range (what binding port 0 gives) can be taken by an outgoing
    connection, and Ray opens many, between the check and the server's bind seconds later:
    CI once saw a replica fail with "address already in use" that way."""
    start = 20000 + os.getpid() % 8000
    for base in range(start, 32768 - count):
        if all(port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {start} and 32768")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def fleet(request, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("cluster")
    base = quiet_ports(3)  # two replicas, then the router
    start = time.monotonic()
    done = cluster("up", "--replicas", "2", "--name", FLEET, "--log-dir", str(log_dir),
                   "--replica-port", str(base), "--router-port", str(base + 2),
                   "--max-restarts", "3", "--", *SERVER_ARGS, timeout=600)
    request.addfinalizer(lambda: cluster("down", "--name", FLEET, "--log-dir", str(log_dir)))
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((log_dir / FLEET / "fleet.json").read_text())
    print(f"cluster up: {time.monotonic() - start:.1f} s\n{done.stdout}")
    ray.init(address=state["address"], namespace="thunderagent", logging_level="ERROR",
             log_to_driver=False)
    request.addfinalizer(ray.shutdown)
    return Fleet(done.stdout.strip().splitlines()[-1], log_dir, state["up_s"],
                 state["started_ray"])


def chat(url: str, pid: str, text: str, n: int = 4) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": text}], max_tokens=n,
        temperature=0, extra_headers={"X-Program-Id": pid}, extra_body={"ignore_eos": True})
    return reply.choices[0].message.content


def live_records(fleet: Fleet) -> dict[str, list[dict]]:
    """Every live record through the router, by program id (a list: one per replica)."""
    body = requests.get(f"{fleet.url}/programs", params={"live": "1"}, timeout=30).json()
    out: dict[str, list[dict]] = {}
    for record in body["programs"]:
        out.setdefault(record["program_id"], []).append(record)
    return out


def release(fleet: Fleet, pids) -> None:
    for pid in pids:
        requests.post(f"{fleet.url}/programs/{pid}/release", timeout=30)


def replica_rows(fleet: Fleet) -> dict[str, dict]:
    return {r["name"]: r for r in status(fleet)["replicas"]}


def test_up_prints_one_url_and_status_lists_both_replicas(fleet):
    assert urlsplit(fleet.url).scheme == "http" and fleet.up_s > 0
    report = status(fleet)
    assert report["url"] == fleet.url
    rows = report["replicas"]
    assert [r["name"] for r in rows] == [f"{FLEET}-replica-0", f"{FLEET}-replica-1"]
    assert [(r["state"], r["restarts"], r["alive"]) for r in rows] == [("ready", 0, True)] * 2
    assert len({r["url"] for r in rows}) == 2 and all(r["node_ip"] for r in rows)
    for r in rows:  # each replica's log on its node
        assert "thunderagent_sglang.launch_server" in Path(r["log"]).read_text()
    assert requests.get(f"{fleet.url}/health", timeout=10).json()["ready_replicas"] == 2
    twice = cluster("up", "--replicas", "1", "--name", FLEET, "--log-dir", str(fleet.log_dir))
    assert twice.returncode == 1 and "already up" in twice.stderr
    unknown = cluster("status", "--name", "nosuch", "--log-dir", str(fleet.log_dir))
    assert unknown.returncode == 1 and "no fleet 'nosuch'" in unknown.stderr
    assert [(r["url"], r["server_pid"]) for r in status(fleet)["replicas"]] == [
        (r["url"], r["server_pid"]) for r in rows]  # neither touched the fleet


def test_programs_spread_over_both_replicas_through_the_printed_url(fleet):
    pids = [f"spread-{i}" for i in range(6)]
    for pid in pids:
        assert isinstance(chat(fleet.url, pid, f"step one of {pid}"), str)
    records = live_records(fleet)
    placed = {pid: records[pid][0]["replica"] for pid in pids}
    assert all(len(records[pid]) == 1 and records[pid][0]["steps"] == 1 for pid in pids)
    assert set(placed.values()) == {r["url"] for r in replica_rows(fleet).values()}
    release(fleet, pids)


def test_a_killed_replica_actor_is_restarted_and_used_again_no_call_lost_or_doubled(fleet):
    pids = [f"kill-{i}" for i in range(4)]
    answered = {pid: 0 for pid in pids}
    for _ in range(2):
        for pid in pids:
            chat(fleet.url, pid, f"a step of {pid}")
            answered[pid] += 1
    rows = replica_rows(fleet)
    victim = rows[f"{FLEET}-replica-1"]
    on_victim = [p for p, r in live_records(fleet).items() if p in pids
                 and r[0]["replica"] == victim["url"]]
    assert on_victim, "the placement put no program on replica 1"
    long_pid, reply = on_victim[0], {}

    def long_call():
        reply["text"] = chat(fleet.url, long_pid, "a long step", n=1000)

    caller = threading.Thread(target=long_call)
    caller.start()
    wait_until(lambda: requests.get(f"{victim['url']}/programs/{long_pid}", timeout=5).json()
               ["in_flight"] == 1, "the long call runs on replica 1", 30)
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(victim["name"], namespace="thunderagent"), no_restart=False)
    caller.join(300)
    assert isinstance(reply.get("text"), str)  # answered once, by the replica left
    after = {pid: 0 for pid in pids}
    after[long_pid] = 1
    for pid in pids:
        for _ in range(2):
            chat(fleet.url, pid, f"a later step of {pid}")
            after[pid] += 1
    records = live_records(fleet)
    for pid in pids:  # one live record each; steps counted once, from where its KV was lost
        assert len(records[pid]) == 1, records[pid]
        record = records[pid][0]
        lost = pid in on_victim
        assert record.get("kv_lost_on") == (victim["url"] if lost else None)
        assert record["steps"] == (after[pid] if lost else answered[pid] + after[pid])

    def back():
        row = replica_rows(fleet)[victim["name"]]
        return row["state"] == "ready" and row["restarts"] == 1 and row["alive"]
    wait_until(back, "replica 1 restarted and ready", 300, every_s=2)
    print(f"killed replica actor back in {time.monotonic() - killed_at:.1f} s")
    row = replica_rows(fleet)[victim["name"]]
    assert row["restarted"] is True and row["actor_pid"] != victim["actor_pid"]
    assert not psutil.pid_exists(victim["server_pid"])  # its old server died with it
    fresh = [f"after-kill-{i}" for i in range(2)]
    for pid in fresh:
        chat(fleet.url, pid, "a new program")
    assert row["url"] in {live_records(fleet)[pid][0]["replica"] for pid in fresh}
    release(fleet, pids + fresh)


def test_a_replica_whose_server_dies_is_restarted_by_ray(fleet):
    victim = replica_rows(fleet)[f"{FLEET}-replica-0"]
    died_at = time.monotonic()
    os.kill(victim["server_pid"], signal.SIGKILL)

    def back():
        row = replica_rows(fleet)[victim["name"]]
        return row["state"] == "ready" and row["restarts"] == 1 \
            and row["server_pid"] != victim["server_pid"]
    wait_until(back, "replica 0 restarted with a new server", 300, every_s=2)
    print(f"replica whose server died back in {time.monotonic() - died_at:.1f} s")
    chat(fleet.url, "after-server-death", "still served")
    release(fleet, ["after-server-death"])


def _connectable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return False
    return True


def test_down_leaves_no_process_port_or_actor_of_ours(fleet):
    """Last: it stops the fleet (and the local Ray cluster that up started)."""
    rows = replica_rows(fleet).values()
    urls = [fleet.url] + [r["url"] for r in rows]
    pids = {r[key] for r in rows for key in ("server_pid", "actor_pid")} | {
        status(fleet)["router"]["pid"]}
    pids |= {c.pid for pid in list(pids) for c in psutil.Process(pid).children(recursive=True)}
    ray.shutdown()
    done = cluster("down", "--name", FLEET, "--log-dir", str(fleet.log_dir))
    assert done.returncode == 0, done.stderr
    assert "stopped 3 actor(s)" in done.stdout
    assert len(pids) >= 9  # router, 2 actors, 2 servers with their scheduler and detokenizer
    wait_until(lambda: not [p for p in pids if psutil.pid_exists(p)
                            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
               "every process of the fleet gone", 20)
    assert [u for u in urls if _connectable(u)] == []
    if fleet.started_ray:
        assert "stopped the local Ray cluster" in done.stdout
        assert [p.name() for p in psutil.process_iter() if p.name() in ("raylet", "gcs_server")] \
            == []
    else:
        ray.init(address="auto", namespace="thunderagent", logging_level="ERROR")
        assert [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(FLEET)] == []
    again = cluster("status", "--name", FLEET, "--log-dir", str(fleet.log_dir))
    assert again.returncode == 1 and "cluster:" in again.stderr
