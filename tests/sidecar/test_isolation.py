"""What a sandboxed command can reach: its workspace and tools, nothing of the host's or the
sidecar's. Real sidecars, real namespaces and mounts; each hole found in the issue is a test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from thunderagent_sglang.sidecar import jail, peers
from thunderagent_sglang.sidecar.settings import DEFAULT_SANDBOX_UID
from tests.sidecar.conftest import needs_local, sleepers

pytestmark = needs_local


def _fails(out: dict, message: str) -> None:
    assert out["exit_code"] != 0 and message in out["stderr"], out


def _host_block_device() -> str:
    return "/dev/" + sorted(n for n in os.listdir("/sys/block") if not n.startswith(("ram",)))[0]


def test_a_command_sees_nothing_of_the_sidecar_or_the_host(sidecar, base):
    env, other = (sidecar.create(base, program_id=p)["env_id"] for p in ("p1", "p2"))
    sidecar.exec(other, "echo secret > mine")
    root = sidecar.root
    for path in (root / "token", root / "envs" / other / "merged" / "mine", root / "url"):
        _fails(sidecar.exec(env, f"cat {path}"), "No such file or directory")
    _fails(sidecar.exec(env, f"ls {root}"), "No such file or directory")
    _fails(sidecar.exec(env, "cat /etc/shadow"), "No such file or directory")
    _fails(sidecar.exec(env, "ls /root"), "No such file or directory")
    listed = sidecar.exec(env, "ls / /dev")["stdout"].split()
    assert sorted(listed[listed.index("/:") + 1:listed.index("/dev:")]) == sorted(
        ["etc", "dev", "proc", "tmp", "workspace"] + [d for d in jail.HOST_DIRS
                                                      if os.path.lexists(f"/{d}")])
    assert sorted(listed[listed.index("/dev:") + 1:]) == sorted(
        [*jail.DEVICES, "fd", "shm", "stdin", "stdout", "stderr"])
    assert sidecar.exec(env, "hostname")["stdout"] == "sandbox\n"  # not the host's name
    etc = set(sidecar.exec(env, "ls /etc")["stdout"].split())
    assert {"passwd", "group", "hosts"} <= etc and not etc & {"shadow", "gshadow", "sudoers",
                                                             "ssh", "machine-id"}


def test_a_command_cannot_change_anything_outside_its_workspace(sidecar, base):
    env = sidecar.create(base)["env_id"]
    _fails(sidecar.exec(env, "mount -o remount,rw /"), "must be superuser")
    for path in ("/usr/x", "/etc/x", "/x", "/proc/sys/kernel/hostname"):
        out = sidecar.exec(env, f"echo x > {path}")
        assert out["exit_code"] != 0 and ("Read-only" in out["stderr"]
                                          or "Permission denied" in out["stderr"]), out
    _fails(sidecar.exec(env, f"head -c1 {_host_block_device()}"), "No such file or directory")
    _fails(sidecar.exec(env, "mknod /tmp/b b 7 0"), "Operation not permitted")
    assert not os.path.exists("/x") and not os.path.exists("/usr/x")
    mounts = [line.split() for line in sidecar.exec(env, "cat /proc/self/mountinfo")[
        "stdout"].splitlines()]
    devices = {f"/dev/{d}" for d in jail.DEVICES}
    for fields in mounts:  # point, then per-mount options
        assert "nosuid" in fields[5].split(","), fields
        assert fields[4] in devices or "nodev" in fields[5].split(","), fields


def test_the_command_runs_unprivileged_as_seen_from_the_host(sidecar, base):
    env = sidecar.create(base)["env_id"]
    runner = threading.Thread(target=sidecar.exec, args=(env, "sleep 1021"), daemon=True)
    runner.start()
    deadline = time.monotonic() + 10
    while not sleepers(1021):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    [pid] = sleepers(1021)
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    uid = str(DEFAULT_SANDBOX_UID)
    assert status["Uid"].split() == [uid] * 4 and status["Gid"].split() == [uid] * 4
    assert status["Groups"].split() == []
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    sidecar.http.delete(f"/envs/{env}")
    runner.join(10)


def test_the_workspace_is_the_sandbox_users_and_the_base_stays_as_it_was(sidecar, base):
    env = sidecar.create(base)["env_id"]
    out = sidecar.exec(env, "echo more >> pkg/mod.py && mkdir pkg/new && echo y > pkg/new/f "
                       "&& stat -c '%U %G' pkg/mod.py pkg/new/f && cat pkg/mod.py")
    assert out["stdout"] == "sandbox sandbox\nsandbox sandbox\nX = 1\nmore\n", out
    assert (base / "pkg" / "mod.py").read_text() == "X = 1\n"
    put = sidecar.http.put(f"/envs/{env}/files/notes/a.txt", content=b"from the harness\n")
    assert put.status_code == 200
    assert sidecar.exec(env, "echo edited >> notes/a.txt && stat -c %U notes notes/a.txt")[
        "stdout"] == "sandbox\nsandbox\n"


def test_without_the_network_only_the_sandboxs_own_loopback_answers(sidecar, base):
    env = sidecar.create(base)["env_id"]
    port = sidecar.url.rsplit(":", 1)[1]
    loopback = ("python3 -c \"import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                "s.listen(); socket.create_connection(s.getsockname()); print('ok')\"")
    assert sidecar.exec(env, loopback)["stdout"] == "ok\n"
    _fails(sidecar.exec(env, f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"),
           "Connection refused")  # the sidecar's API is not in this network namespace
    _fails(sidecar.exec(env, f"bash -c 'exec 3<>/dev/tcp/{_host_address()}/{port}'"),
           "Network is unreachable")


@pytest.mark.parametrize("root", [False, True])
def test_with_the_network_allowed_the_sidecars_api_refuses_the_sandbox(start_sidecar, base, root):
    sidecar = start_sidecar("--allow-network", "--allow-root")
    env = sidecar.create(base, limits={"network": True}, root=root)["env_id"]
    host, port = sidecar.url.removeprefix("http://").rsplit(":", 1)
    ask = (f"bash -c 'exec 3<>/dev/tcp/{host}/{port}; printf \"GET /stats HTTP/1.0\\r\\n"
           "Authorization: Bearer test-token\\r\\n\\r\\n\" >&3; cat <&3'")
    out = sidecar.exec(env, ask)
    assert "HTTP/1" not in out["stdout"], out  # no answer at all, not even a 401
    assert sidecar.read_log().count("refused a connection from a sandbox") == 1
    assert sidecar.http.get("/stats").status_code == 200  # the host's own clients still get in


def test_root_when_allowed_has_only_a_small_capability_set(start_sidecar, base):
    sidecar = start_sidecar("--allow-root")
    env = sidecar.create(base, root=True)["env_id"]
    out = sidecar.exec(env, "id -u; grep CapEff /proc/self/status; echo 1 > "
                       "/proc/sys/kernel/hostname; mount -t tmpfs x /tmp; chroot / true")
    caps = int(out["stdout"].split()[2], 16)
    wanted = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6,
              "setuid": 7, "net_bind_service": 10}
    assert out["stdout"].split()[0] == "0"
    assert caps == sum(1 << bit for bit in wanted.values()) and set(wanted) == set(jail.ROOT_CAPS)
    assert "Read-only file system" in out["stderr"] and "permission denied" in out["stderr"]
    assert "chroot: cannot change root directory to '/': Operation not permitted" in out["stderr"]


def test_what_the_operator_did_not_allow_is_refused_and_creates_nothing(sidecar, base):
    outside = base.parent.parent / "elsewhere"
    outside.mkdir()
    link = base.parent / "link-out"
    link.symlink_to(outside)
    cases = [({"base_dir": "/etc"}, 403, "outside the allowed base roots"),
             ({"base_dir": str(link)}, 403, "outside the allowed base roots"),
             ({"base_dir": f"{base}/../../elsewhere"}, 403, "outside the allowed base roots"),
             ({"image": "/", "backend": "local"}, 403, "outside the allowed base roots"),
             ({"base_dir": str(base), "limits": {"network": True}}, 403, "--allow-network"),
             ({"base_dir": str(base), "root": True}, 403, "--allow-root"),
             ({"base_dir": str(base), "ports": ["web"]}, 422, "ports need the network"),
             ({"base_dir": f"{base}\0/x"}, 400, "NUL"),
             ({"base_dir": "/" + "a" * 5000}, 400, "at most 4096 characters")]
    for body, status, message in cases:
        reply = sidecar.http.post("/envs", json={"program_id": "p", **body})
        assert (reply.status_code, message in reply.json()["detail"]) == (status, True), body
    assert sidecar.http.get("/envs").json() == {"envs": []}
    assert os.listdir(sidecar.root / "envs") == []
    assert os.listdir(sidecar.root / "records" / "envs") == []


def test_a_base_root_that_would_show_the_sidecars_state_is_refused(tmp_path):
    for given in (tmp_path, tmp_path / "root", tmp_path / "root" / "envs"):
        done = subprocess.run([sys.executable, "-m", "thunderagent_sglang.sidecar", "--root",
                               str(tmp_path / "root"), "--base-root", str(given)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "would show the sidecar's own state" in done.stderr


def test_a_socket_of_the_sandbox_uid_is_recognised_as_a_sandboxs(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    code = ("import socket, sys, time; c = socket.create_connection(('127.0.0.1', "
            f"{listener.getsockname()[1]})); print(c.getsockname()[1], flush=True); "
            "time.sleep(30)")
    child = subprocess.Popen(["setpriv", f"--reuid={DEFAULT_SANDBOX_UID}",
                              f"--regid={DEFAULT_SANDBOX_UID}", "--clear-groups", sys.executable,
                              "-S", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        conn, peer = listener.accept()
        assert int(child.stdout.readline()) == peer[1]
        assert peers.socket_owner(peer, conn.getsockname())[0] == DEFAULT_SANDBOX_UID
        assert peers.from_sandbox(peer, conn.getsockname(), DEFAULT_SANDBOX_UID, False) is True
        mine = socket.create_connection(listener.getsockname())
        accepted, mine_peer = listener.accept()
        assert peers.from_sandbox(mine_peer, accepted.getsockname(), DEFAULT_SANDBOX_UID,
                                  True) is False  # root, and held in our own pid namespace
        mine.close()
        accepted.close()
        conn.close()
    finally:
        child.kill()
        child.wait()
        listener.close()


def test_peer_addresses_are_spelled_as_the_kernel_does():
    assert peers.encode("127.0.0.1", 80) == {"0100007F:0050",
                                              "0000000000000000FFFF00000100007F:0050"}
    assert peers.encode("::1", 443) == {"00000000000000000000000001000000:01BB"}
    assert peers.is_loopback("::ffff:127.0.0.1") and not peers.is_loopback("10.0.0.1")


def _host_address() -> str:
    """An address of this host that is not loopback (where a default route leads)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent
        return s.getsockname()[0]
