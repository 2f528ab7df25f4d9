"""Program-owned lifecycle on real sidecars: events, GC, preparation, tool phases, crash sweep."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from thunderagent_sglang.sidecar import disk, jail
from tests.sidecar.conftest import command_lines, needs_local, sleepers

pytestmark = needs_local


def _wait(predicate, limit=10.0):
    """The predicate's first truthy value (polled every 50 ms for ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
    return value


def test_terminated_destroys_the_programs_envs_and_unused_snapshots(sidecar, base):
    a1, a2 = sidecar.create(base, "A")["env_id"], sidecar.create(base, "A")["env_id"]
    b1 = sidecar.create(base, "B")["env_id"]
    sidecar.exec(a1, "echo x > f")
    snap = sidecar.http.post(f"/envs/{a1}/snapshot").json()["snapshot"]
    reply = sidecar.http.post("/events", json={"program_id": "A", "event": "terminated"})
    assert reply.status_code == 200 and sorted(reply.json()["envs"]) == sorted([a1, a2])
    assert [e["env_id"] for e in sidecar.http.get("/envs").json()["envs"]] == [b1]
    assert sorted(os.listdir(sidecar.root / "envs")) == [b1]
    assert os.listdir(sidecar.root / "layers") == []  # snapshot of A, used by no one: removed
    assert sidecar.http.get("/stats").json()["counters"]["destroyed"] == {"terminated": 2}
    assert snap not in sidecar.http.get("/stats").json()["disk"]["layers"]


def test_snapshot_used_by_another_program_outlives_its_maker(sidecar, base):
    a = sidecar.create(base, "A")["env_id"]
    snap = sidecar.http.post(f"/envs/{a}/snapshot").json()["snapshot"]
    b = sidecar.create(base, "B", snapshot=snap)["env_id"]
    sidecar.http.post("/events", json={"program_id": "A", "event": "terminated"})
    assert os.listdir(sidecar.root / "layers") == [snap]
    sidecar.http.post("/events", json={"program_id": "B", "event": "terminated"})
    assert os.listdir(sidecar.root / "layers") == [] and b not in os.listdir(sidecar.root / "envs")


def test_unknown_event_is_400(sidecar):
    got = sidecar.http.post("/events", json={"program_id": "A", "event": "exploded"})
    assert got.status_code == 400 and "terminated" in got.json()["detail"]


def test_idle_ttl_reaps_idle_envs_but_not_those_of_paused_programs(start_sidecar, base):
    sc = start_sidecar("--idle-ttl", "1", "--gc-interval", "0.2")
    waiting = sc.create(base, "waiting")["env_id"]
    idle = sc.create(base, "idle")["env_id"]
    sc.http.post("/events", json={"program_id": "waiting", "event": "paused"})
    time.sleep(2.0)
    listed = [e["env_id"] for e in sc.http.get("/envs").json()["envs"]]
    assert listed == [waiting]
    assert sc.http.get("/stats").json()["counters"]["destroyed"] == {"idle": 1}
    # Resumed: its idle clock restarts at the resume, then it is reaped when really idle.
    sc.http.post("/events", json={"program_id": "waiting", "event": "resumed"})
    assert sc.http.get(f"/envs/{waiting}").status_code == 200
    _wait(lambda: sc.http.get(f"/envs/{waiting}").status_code == 404, limit=5)
    assert idle not in os.listdir(sc.root / "envs")


def test_running_cap_pauses_least_recently_used(start_sidecar, base):
    sc = start_sidecar("--max-running", "2", "--gc-interval", "0.2")
    ids = [sc.create(base, f"p{i}")["env_id"] for i in range(3)]
    sc.exec(ids[0], "true")  # ids[1] is now the least recently used
    _wait(lambda: sc.http.get(f"/envs/{ids[1]}").json()["state"] == "paused")
    assert [sc.http.get(f"/envs/{i}").json()["state"] for i in ids] == [
        "running", "paused", "running"]
    assert sc.exec(ids[1], "cat README")["stdout"] == "base readme\n"  # use resumes it


def test_prepare_materializes_lazy_and_resumes_paused_envs_before_use(sidecar, base):
    lazy = sidecar.create(base, "P", lazy=True, setup="echo prepared > setup.txt")
    assert lazy["state"] == "pending" and lazy["prepared_at"] is None
    paused = sidecar.create(base, "P")["env_id"]
    sidecar.http.post(f"/envs/{paused}/pause")
    before = time.time()
    reply = sidecar.http.post("/events", json={"program_id": "P", "event": "prepare"})
    assert reply.status_code == 202
    _wait(lambda: sidecar.http.get(f"/envs/{lazy['env_id']}").json()["state"] == "running")
    _wait(lambda: sidecar.http.get(f"/envs/{paused}").json()["state"] == "running")
    got = sidecar.http.get(f"/envs/{lazy['env_id']}").json()
    assert got["prepared_at"] >= before
    assert sidecar.http.get(f"/envs/{lazy['env_id']}/files/setup.txt").content == b"prepared\n"


class _ToolServer(ThreadingHTTPServer):
    """A stand-in ThunderAgent server that records POST /programs/{id}/tool and PUT
    /programs/{id}/environments (answered ``put_status``, 200 or 404)."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.reports: list[tuple] = []  # path, status answered, environments, when
        self.put_status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self):
                return json.loads(self.rfile.read(int(self.headers["content-length"])))

            def _answer(self, status):
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def do_POST(self):  # noqa: N802
                outer.events.append((self.path, self._body()))
                self._answer(200)

            def do_PUT(self):  # noqa: N802
                status = outer.put_status
                outer.reports.append((self.path, status, self._body()["environments"],
                                      time.monotonic()))
                self._answer(status)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_exec_is_reported_as_a_tool_phase_in_order(start_sidecar, base):
    server = _ToolServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sc = start_sidecar("--server-url", f"http://127.0.0.1:{server.server_port}")
        env = sc.create(base, "prog/1")["env_id"]
        sc.exec(env, "true", expected_s=7.5, tool="pytest")
        sc.exec(env, "true")
        _wait(lambda: len(server.events) == 4)
        assert server.events == [
            ("/programs/prog%2F1/tool", {"event": "start", "expected_s": 7.5, "tool": "pytest"}),
            ("/programs/prog%2F1/tool", {"event": "end"}),
            ("/programs/prog%2F1/tool", {"event": "start"}),
            ("/programs/prog%2F1/tool", {"event": "end"}),
        ]
        bad = sc.http.post(f"/envs/{env}/exec", json={"cmd": "true", "tool": "rm -rf"})
        assert bad.status_code == 400 and "tool must be 1-64 characters" in bad.json()["detail"]
    finally:
        server.shutdown()


def test_environments_are_reported_when_they_change_and_not_again_when_they_do_not(
        start_sidecar, base):
    """Each program's environments reach the server's record: created, a running command
    (its tool, its text cut to 200 characters), the command done, destroyed. A refused report
    (the program has no call yet) is offered again after 5 s, not every second."""
    server = _ToolServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sc = start_sidecar("--server-url", f"http://127.0.0.1:{server.server_port}")
        env = sc.create(base, "prog/2", limits={"disk": "16M"})["env_id"]
        path = "/programs/prog%2F2/environments"
        first = _wait(lambda: server.reports and server.reports[0])
        assert first[:2] == (path, 200)
        assert [(e["env_id"], e["backend"], e["state"], e["disk_cap"], e["commands"])
                for e in first[2]] == [(env, "local", "running", 16 << 20, [])]
        cmd = "sleep 2; true " + "x" * 300
        runner = threading.Thread(target=sc.exec, args=(env, cmd), kwargs={"tool": "pytest"})
        runner.start()
        running = _wait(lambda: next((r for r in server.reports if r[2][0]["commands"]), None))
        assert [(c["cmd"], c["tool"]) for c in running[2][0]["commands"]] == [
            (cmd[:199] + "\u2026", "pytest")]
        assert abs(running[2][0]["commands"][0]["started_at"] - time.time()) < 5
        runner.join(30)
        _wait(lambda: server.reports[-1][2][0]["commands"] == [])
        time.sleep(2.5)  # GC ticks: the same report is not sent again
        count = len(server.reports)
        time.sleep(2.0)
        assert len(server.reports) == count, "an unchanged report was sent again"
        assert sc.http.delete(f"/envs/{env}").status_code == 200
        _wait(lambda: server.reports[-1][2] == [])
        server.put_status = 404  # a program the server does not run
        sc.create(base, "prog-3")
        refused = lambda: [r for r in server.reports  # noqa: E731
                           if r[0] == "/programs/prog-3/environments"]
        # the same report again after 5 s (a changed one, e.g. its disk use, at once)
        again = _wait(lambda: next((b for a, b in zip(refused(), refused()[1:])
                                    if a[2] == b[2]), None), limit=12)
        same = [(a, b) for a, b in zip(refused(), refused()[1:]) if a[2] == b[2]]
        assert {r[1] for r in refused()} == {404} and again[2][0]["env_id"].startswith("env-")
        assert all(b[3] - a[3] >= 4.9 for a, b in same), "a refused report resent too soon"
    finally:
        server.shutdown()


def test_unreachable_server_never_fails_an_exec(start_sidecar, base):
    sc = start_sidecar("--server-url", "http://127.0.0.1:9")
    envs = [sc.create(base, f"p{i}")["env_id"] for i in range(3)]
    assert sc.exec(envs[0], "echo ok")["stdout"] == "ok\n"
    time.sleep(6)  # past the 5 s retry of three programs' refused reports
    lines = [line for line in sc.read_log().splitlines() if "environments of program" in line]
    assert len(lines) == 1 and "not logged until a report goes through" in lines[0]


def test_kill_9_leaves_nothing_running_or_mounted_and_the_restart_restores(start_sidecar, base):
    sc = start_sidecar()
    envs = [sc.create(base, program_id=f"p{i}", limits={"disk": "16M"} if i == 0 else None)
            ["env_id"] for i in range(3)]
    sc.exec(envs[0], "echo kept > k")
    snap = sc.http.post(f"/envs/{envs[1]}/snapshot").json()["snapshot"]
    stubborn = ("trap '' TERM; for i in 1 2 3; do (trap '' TERM; exec sleep 1005) & done; "
                "sleep 1006")

    def long_exec(env_id, cmd):
        try:
            sc.http.post(f"/envs/{env_id}/exec", json={"cmd": cmd, "timeout": 300})
        except httpx.TransportError:
            pass  # the sidecar is killed under it

    for env_id, cmd in ((envs[2], "sleep 1004"), (envs[0], stubborn)):
        threading.Thread(target=long_exec, args=(env_id, cmd), daemon=True).start()
    _wait(lambda: len(sleepers(1004, 1005, 1006)) == 5)
    assert len([p for p in sc.mounts_under(sc.root) if p.endswith("/merged")]) == 3
    assert len(disk.loop_devices_under(str(sc.root))) == 1
    sc.kill9()
    # No sweep needed: the sandboxes die with the sidecar, its mounts with its namespace.
    _wait(lambda: sleepers(1004, 1005, 1006) == [] and disk.loop_devices_under(str(sc.root))
          == [], limit=10)
    assert not any(f"{jail.MARK}:{sc.root}:".encode() in cmdline
                   for cmdline in command_lines().values())
    assert disk.mounts_under(str(sc.root)) == []
    again = start_sidecar()  # the same root: its environments come back, paused
    listed = {e["env_id"]: e for e in again.http.get("/envs").json()["envs"]}
    assert sorted(listed) == sorted(envs)
    assert {e["state"] for e in listed.values()} == {"paused"}
    assert again.exec(envs[0], "cat k")["stdout"] == "kept\n"  # the disk image kept its data
    clone = again.create(base, program_id="p9", snapshot=snap)["env_id"]
    assert again.exec(clone, "ls")["exit_code"] == 0
    assert "restored 3 environments" in again.read_log()


def test_destroy_during_a_setup_command_kills_it_at_once(sidecar, base):
    replies = []

    def create():
        replies.append(sidecar.http.post("/envs", json={
            "program_id": "P", "base_dir": str(base), "setup": "sleep 1008"}))

    creator = threading.Thread(target=create)
    creator.start()
    _wait(lambda: sleepers(1008) != [])  # (a process may exit while /proc is read)
    [env] = sidecar.http.get("/envs").json()["envs"]
    start = time.monotonic()
    gone = sidecar.http.delete(f"/envs/{env['env_id']}", timeout=10)  # the setup holds the lock
    assert gone.json()["destroyed"] is True and time.monotonic() - start < 5
    creator.join(10)
    assert replies[0].status_code == 409
    assert "destroyed during its setup command" in replies[0].json()["detail"]
    assert sidecar.http.get("/envs").json() == {"envs": []}
    assert os.listdir(sidecar.root / "envs") == []
    assert sidecar.http.get("/stats").json()["counters"]["destroyed"] == {"request": 1}


def test_a_start_sweeps_dead_sidecars_roots_beside_it_but_not_live_ones(start_sidecar, base):
    live = start_sidecar(name="sidecars/live")
    dead = start_sidecar(name="sidecars/dead")
    live_env = live.create(base)["env_id"]
    dead.create(base, limits={"disk": "16M"})
    dead.kill9()
    assert (dead.root / "records" / "envs").exists()
    sweeper = start_sidecar("--sweep-dir", str(dead.root.parent), name="sidecars/new")
    assert not dead.root.exists()  # swept and removed
    assert "dead sidecar root" in sweeper.read_log()
    assert live.http.get(f"/envs/{live_env}").json()["state"] == "running"  # untouched
    assert live.exec(live_env, "cat README")["stdout"] == "base readme\n"
    assert disk.loop_devices_under(str(dead.root)) == []
