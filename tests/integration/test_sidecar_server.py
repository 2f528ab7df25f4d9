"""The server with its sidecar (``--thunderagent-sidecar``): tool phases in, program events out.

One server per module, started through our launcher; the launcher starts the sidecar and logs
``ThunderAgent sidecar: URL (token in FILE, log in LOG)``, which is how the tests find it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.server import Server, wait_until
from thunderagent_sglang.sidecar import disk
from tests.sidecar.conftest import sleepers

pytestmark = pytest.mark.server
API_KEY = "sidecar-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# --enable-metrics: meta_info then carries forward_entry_time, when a call was admitted.
ARGS = ["--thunderagent-sidecar", "--api-key", API_KEY, "--enable-metrics"]
SIDECAR_LINE = re.compile(r"ThunderAgent sidecar: (http://\S+) \((token in (\S+)|token from "
                          r"THUNDERAGENT_SIDECAR_TOKEN), log in (\S+)\)")


class SidecarClient:
    def __init__(self, url: str, token: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def create(self, program_id: str, base: Path) -> str:
        reply = self.session.post(f"{self.url}/envs", timeout=60,
                                  json={"program_id": program_id, "base_dir": str(base)})
        assert reply.status_code == 201, reply.text
        return reply.json()["env_id"]

    def env(self, env_id: str) -> requests.Response:
        return self.session.get(f"{self.url}/envs/{env_id}", timeout=30)

    def envs_of(self, program_id: str) -> list[str]:
        envs = self.session.get(f"{self.url}/envs", timeout=30).json()["envs"]
        return sorted(e["env_id"] for e in envs if e["program_id"] == program_id)

    def exec(self, env_id: str, cmd: str, **extra) -> dict:
        reply = self.session.post(f"{self.url}/envs/{env_id}/exec", timeout=60,
                                  json={"cmd": cmd, "timeout": 30, **extra})
        assert reply.status_code == 200, reply.text
        return reply.json()


def find_sidecar(server: Server) -> tuple[SidecarClient, Path]:
    """The sidecar's client and root, from the launcher's log line."""
    match = SIDECAR_LINE.search(server.log())
    assert match, f"the launcher logged no sidecar line:\n{server.tail()}"
    url, token_file, log_path = match[1], match[3], Path(match[4])
    token = (Path(token_file).read_text().strip() if token_file
             else os.environ["THUNDERAGENT_SIDECAR_TOKEN"])
    return SidecarClient(url, token), log_path.parent


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bases")


@pytest.fixture(scope="module")
def served(request, tmp_path_factory, bases):
    args = [*ARGS, "--thunderagent-sidecar-base-root", str(bases)]
    server = Server("sidecar", args, {}, tmp_path_factory.mktemp("sidecar-server"))
    root: list[Path] = []

    def stop():
        server.stop()
        if root:
            leftovers = disk.unmount_all_under(str(root[0]))  # enforce, then report
            shutil.rmtree(root[0], ignore_errors=True)
            assert leftovers == [], f"the sidecar left mounts behind: {leftovers}"

    request.addfinalizer(stop)
    server.wait_ready()
    sidecar, sidecar_root = find_sidecar(server)
    root.append(sidecar_root)
    return server, sidecar


@pytest.fixture(scope="module")
def base(bases) -> Path:
    path = bases / "base"
    path.mkdir()
    (path / "README").write_text("base readme\n")
    return path


def new_id() -> str:
    return f"prog-{uuid.uuid4().hex[:8]}"


def generate(server: Server, program_id: str, headers: dict | None = None) -> dict:
    reply = requests.post(
        f"{server.url}/generate", timeout=120, headers={**AUTH, "X-Program-Id": program_id,
                                                         **(headers or {})},
        json={"text": "Run the tests.", "sampling_params": {"max_new_tokens": 4,
                                                            "temperature": 0}})
    assert reply.status_code == 200, reply.text
    return reply.json()


def record(server: Server, program_id: str) -> dict:
    reply = requests.get(f"{server.url}/programs/{program_id}", headers=AUTH, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_tool_exec_through_the_sidecar_is_the_programs_acting_phase(served, base):
    server, sidecar = served
    pid = new_id()
    generate(server, pid)
    env_id = sidecar.create(pid, base)
    before = record(server, pid)
    assert (before["phase"], before["tool_running"]) == ("acting", False)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        sidecar.exec(env_id, "sleep 1; echo hi", expected_s=1.0)))
    runner.start()
    during = wait_until(lambda: (r := record(server, pid))["tool_running"] and r,
                        "the exec shows as a running tool", deadline_s=1.0)
    runner.join(60)
    after = record(server, pid)
    assert (during["status"], during["phase"], during["tool_running"]) == ("active", "acting", True)
    assert (result["exit_code"], result["stdout"], result["timed_out"]) == (0, "hi\n", False)
    assert (after["phase"], after["tool_running"]) == ("acting", False)
    assert after["seconds_acting"] >= before["seconds_acting"] + 1.0


def test_the_programs_record_shows_its_environments_disk_and_running_commands(served, base):
    server, sidecar = served
    pid = new_id()
    generate(server, pid)
    env_id = sidecar.create(pid, base)
    envs = wait_until(lambda: record(server, pid)["environments"], "the sidecar's report")
    assert [(e["env_id"], e["backend"], e["state"], e["commands"]) for e in envs] == [
        (env_id, "local", "running", [])]
    sidecar.exec(env_id, "head -c 1048576 /dev/zero > blob")
    # A report taken while `head` ran may carry the full disk and `head` as running:
    # wait for the one that also reports its end.
    wait_until(lambda: (e := record(server, pid)["environments"][0])["disk_bytes"] >= 1 << 20
               and e["commands"] == [], "the disk use and the command's end reported")
    runner = threading.Thread(target=sidecar.exec, args=(env_id, "sleep 2"),
                              kwargs={"tool": "pytest"})
    runner.start()
    running = wait_until(lambda: record(server, pid)["environments"][0]["commands"],
                         "the running command reported", deadline_s=1.5)
    assert [(c["cmd"], c["tool"]) for c in running] == [("sleep 2", "pytest")]
    runner.join(30)
    wait_until(lambda: record(server, pid)["environments"][0]["commands"] == [],
               "the command's end reported")
    assert sidecar.session.delete(f"{sidecar.url}/envs/{env_id}", timeout=30).status_code == 200
    wait_until(lambda: record(server, pid)["environments"] == [], "the destroy reported")
    url = f"{server.url}/programs/{pid}/environments"
    bad = requests.put(url, headers=AUTH, timeout=30,
                       json={"environments": [{"env_id": "a b", "backend": "local",
                                               "state": "running"}]})
    assert bad.status_code == 400 and "env_id must be 1-64" in bad.json()["error"]
    assert requests.put(url, headers=AUTH, data=b"\x00", timeout=30).status_code == 400
    assert requests.put(url, json={"environments": []}, timeout=30).status_code == 401
    unknown = requests.put(f"{server.url}/programs/{new_id()}/environments", headers=AUTH,
                           json={"environments": []}, timeout=30)
    assert unknown.status_code == 404
    assert record(server, pid)["environments"] == []


def test_release_makes_the_sidecar_destroy_the_programs_environments_only(served, base):
    server, sidecar = served
    pid, other = new_id(), new_id()
    generate(server, pid)
    generate(server, other)
    envs = [sidecar.create(pid, base), sidecar.create(pid, base)]
    kept = sidecar.create(other, base)
    reply = requests.post(f"{server.url}/programs/release", headers=AUTH, timeout=30,
                          json={"program_id": pid})
    assert reply.status_code == 200, reply.text
    wait_until(lambda: sidecar.envs_of(pid) == [], f"{pid}'s environments destroyed")
    assert [sidecar.env(e).status_code for e in envs] == [404, 404]
    assert sidecar.envs_of(other) == [kept]
    assert record(server, pid)["status"] == "terminated"


def test_final_marker_makes_the_sidecar_destroy_the_programs_environments(served, base):
    server, sidecar = served
    pid = new_id()
    generate(server, pid)
    env_id = sidecar.create(pid, base)
    generate(server, pid, headers={"X-Program-Final": "1"})
    wait_until(lambda: sidecar.envs_of(pid) == [], f"{pid}'s environment destroyed")
    assert sidecar.env(env_id).status_code == 404
    assert (record(server, pid)["status"], record(server, pid)["release_cause"]) == (
        "terminated", "final")


def test_prepare_reaches_the_sidecar_before_a_paused_programs_call_is_admitted(served, base):
    """Admission time: meta_info's forward_entry_time (wall clock, --enable-metrics), when the
    call first entered a forward batch. The sidecar stamps its env's ``prepared_at`` (wall
    clock, same machine) each time it has handled "prepare" or "resumed" for the program; a
    later event overwrites it, so it is read while the call is held and again at the end, and
    the earliest stamp must fall after the pause and before admission."""
    server, sidecar = served
    pid = new_id()
    generate(server, pid)
    env_id = sidecar.create(pid, base)
    assert sidecar.env(env_id).json()["prepared_at"] is None
    paused_at = time.time()
    reply = requests.post(f"{server.url}/programs/{pid}/pause", headers=AUTH, timeout=30)
    assert reply.json()["status"] == "paused"
    answer: dict = {}
    caller = threading.Thread(target=lambda: answer.update(generate(server, pid)), daemon=True)
    caller.start()
    try:
        wait_until(lambda: record(server, pid)["waiting"] == 1, f"{pid}'s call held")
        # "prepare" is sent when a paused program's first call is held: wait for its effect.
        stamps = [wait_until(lambda: sidecar.env(env_id).json()["prepared_at"],
                             "the sidecar prepared the held program's environment")]
        assert caller.is_alive(), "the paused program's call completed while paused"
        assert record(server, pid)["status"] == "paused"
    finally:
        requests.post(f"{server.url}/programs/{pid}/resume", headers=AUTH, timeout=30)
    caller.join(60)
    admitted_at = answer["meta_info"]["forward_entry_time"]
    stamps.append(sidecar.env(env_id).json()["prepared_at"])
    stamps = [t for t in stamps if t is not None]
    assert stamps, "the sidecar never got prepare or resumed for the program"
    assert paused_at < min(stamps) < admitted_at


def _sidecar_pid(root: Path) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"thunderagent_sglang.sidecar" in args and str(root).encode() in args:
            return int(pid)
    raise AssertionError(f"no sidecar process with root {root}")


def _metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_a_killed_sidecar_comes_back_and_nothing_is_lost_or_left(served, base):
    """kill -9 during two running execs (one forks children that ignore SIGTERM): the old
    sidecar's processes and loop devices are gone, the launcher starts it again on the same
    URL, a program released meanwhile loses its environment, a paused one keeps its own."""
    server, sidecar = served
    root = find_sidecar(server)[1]
    released, paused = new_id(), new_id()
    for pid in (released, paused):
        generate(server, pid)
    gone, kept = sidecar.create(released, base), sidecar.create(paused, base)
    sidecar.exec(kept, "echo kept > k")
    assert requests.post(f"{server.url}/programs/{paused}/pause", headers=AUTH,
                         timeout=30).json()["status"] == "paused"
    restarts = _metric(server, "thunderagent_sidecar_restarts_total")
    stubborn = "trap '' TERM; (trap '' TERM; exec sleep 1032) & sleep 1033"
    for env_id, cmd in ((gone, "sleep 1031"), (kept, stubborn)):
        threading.Thread(target=lambda e=env_id, c=cmd: _quietly(sidecar.exec, e, c),
                         daemon=True).start()
    wait_until(lambda: len(sleepers(1031, 1032, 1033)) == 3, "the execs run")
    old = _sidecar_pid(root)
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    reply = requests.post(f"{server.url}/programs/release", headers=AUTH, timeout=30,
                          json={"program_id": released})  # while the sidecar is down
    assert reply.status_code == 200, reply.text
    wait_until(lambda: sleepers(1031, 1032, 1033) == [] and disk.loop_devices_under(str(root))
               == [], "the old sidecar's processes and loop devices gone", deadline_s=10)
    assert disk.mounts_under(str(root)) == []
    wait_until(lambda: _answers(sidecar), "the sidecar answers again", deadline_s=60)
    assert _sidecar_pid(root) != old
    print(f"sidecar back {time.monotonic() - killed_at:.1f} s after kill -9")
    wait_until(lambda: sidecar.envs_of(released) == [], f"{released}'s environment destroyed")
    assert sidecar.envs_of(paused) == [kept]
    assert sidecar.exec(kept, "cat k")["stdout"] == "kept\n"
    assert _metric(server, "thunderagent_sidecar_restarts_total") == restarts + 1
    assert _metric(server, "thunderagent_sidecar_up") == 1
    requests.post(f"{server.url}/programs/{paused}/resume", headers=AUTH, timeout=30)


def _quietly(fn, *args):
    try:
        fn(*args)
    except (requests.RequestException, AssertionError):
        pass  # the sidecar is killed under it


def _answers(sidecar: SidecarClient) -> bool:
    try:
        return sidecar.session.get(f"{sidecar.url}/stats", timeout=2).status_code == 200
    except requests.RequestException:
        return False
