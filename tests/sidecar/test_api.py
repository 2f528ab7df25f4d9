"""The HTTP API on a real sidecar process with the local backend (real overlays, namespaces)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.sidecar.conftest import needs_local

pytestmark = needs_local


def _procs_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read().replace(b"\0", b" "):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_token_missing_or_wrong_is_401_before_anything_else(sidecar):
    bare = httpx.Client(base_url=sidecar.url)
    assert bare.get("/envs").status_code == 401
    assert bare.post("/envs", content=b"{not json").status_code == 401
    wrong = bare.get("/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]


def test_malformed_json_and_bad_fields_are_400(sidecar, base):
    bad_json = sidecar.http.post("/envs", content=b"{not json",
                                 headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "malformed" in bad_json.json()["detail"]
    no_base = sidecar.http.post("/envs", json={"program_id": "p"})
    assert no_base.status_code == 400 and "base_dir" in no_base.json()["detail"]
    unknown_field = sidecar.http.post("/envs", json={"program_id": "p", "base_dir": str(base),
                                                     "colour": "red"})
    assert unknown_field.status_code == 400
    missing_dir = sidecar.http.post("/envs", json={"program_id": "p",
                                                   "base_dir": str(base.parent / "nope")})
    assert missing_dir.status_code == 400 and "not a directory" in missing_dir.json()["detail"]
    assert sidecar.http.get("/stats").json()["envs"] == 0


def test_unknown_env_is_404_and_destroy_is_idempotent(sidecar, base):
    assert sidecar.http.get("/envs/env-nope").status_code == 404
    assert sidecar.http.post("/envs/env-nope/exec", json={"cmd": "true"}).status_code == 404
    env = sidecar.create(base)
    first = sidecar.http.delete(f"/envs/{env['env_id']}")
    again = sidecar.http.delete(f"/envs/{env['env_id']}")
    assert (first.status_code, first.json()["destroyed"]) == (200, True)
    assert (again.status_code, again.json()["destroyed"]) == (200, False)
    assert sidecar.http.get(f"/envs/{env['env_id']}").status_code == 404
    assert not os.path.exists(sidecar.root / "envs" / env["env_id"])


def test_exec_sees_clone_of_base_with_readonly_host_and_own_pid_namespace(sidecar, base):
    env = sidecar.create(base)["env_id"]
    out = sidecar.exec(env, "cat README && echo changed > README && mkdir -p d && "
                            "touch /usr/forbidden; n=0; for p in /proc/[0-9]*; do n=$((n+1)); "
                            "done; echo procs=$n; echo $FOO; pwd", cwd=".", env={"FOO": "bar"})
    # Two processes in its pid namespace: the jail's shell (pid 1) and the command's.
    assert out["stdout"] == "base readme\nprocs=2\nbar\n/workspace\n", out
    assert "Read-only file system" in out["stderr"]
    assert (base / "README").read_text() == "base readme\n"  # the shared base is untouched
    assert sidecar.exec(env, "pwd", cwd="pkg")["stdout"] == "/workspace/pkg\n"
    assert sidecar.http.get(f"/envs/{env}/files/README").content == b"changed\n"


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(sidecar, base):
    env = sidecar.create(base)["env_id"]
    assert sidecar.exec(env, "kill -9 $$")["exit_code"] == 137
    assert sidecar.exec(env, "kill -15 $$")["exit_code"] == 143
    assert sidecar.exec(env, "exit 7")["exit_code"] == 7


def test_timeout_kills_the_whole_process_tree(sidecar, base):
    env = sidecar.create(base)["env_id"]
    start = time.monotonic()
    out = sidecar.exec(env, "sh -c 'sleep 1001 & sleep 1002' ; sleep 1003", timeout=1)
    assert out["timed_out"] is True and out["exit_code"] == 137
    assert time.monotonic() - start < 5
    time.sleep(0.2)
    assert _procs_with("sleep 100") == []


def test_file_io_and_path_traversal_refused(sidecar, base):
    env = sidecar.create(base)["env_id"]
    put = sidecar.http.put(f"/envs/{env}/files/a/b/c.txt", content=b"hello")
    assert put.status_code == 200 and put.json()["bytes"] == 5
    assert sidecar.exec(env, "cat a/b/c.txt")["stdout"] == "hello"
    for path in ("..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx", "%2Fetc%2Fpasswd"):
        got = sidecar.http.get(f"/envs/{env}/files/{path}")
        assert got.status_code == 400, (path, got.text)
        assert sidecar.http.put(f"/envs/{env}/files/{path}", content=b"x").status_code == 400
    sidecar.exec(env, "ln -s /etc/hostname escape")
    assert sidecar.http.get(f"/envs/{env}/files/escape").status_code == 400
    assert sidecar.http.get(f"/envs/{env}/files/missing").status_code == 404


def test_disk_cap_stops_writes_with_a_clear_error(sidecar, base):
    env = sidecar.create(base, limits={"disk": "16M"})["env_id"]
    out = sidecar.exec(env, "dd if=/dev/zero of=big bs=1M count=64")
    assert out["exit_code"] != 0 and out["disk_full"] is True
    put = sidecar.http.put(f"/envs/{env}/files/more", content=b"x" * (4 << 20))
    assert put.status_code == 507 and "disk cap" in put.json()["detail"]
    image = sidecar.root / "envs" / env / "disk.img"
    assert image.stat().st_blocks * 512 <= 17 << 20  # sparse, bounded by the cap


def test_ports_are_unique_and_released_on_destroy(start_sidecar, base):
    sidecar = start_sidecar("--allow-network")
    envs = [sidecar.create(base, ports=["web", "db"], limits={"network": True})
            for _ in range(3)]
    ports = [p for e in envs for p in e["ports"].values()]
    assert len(set(ports)) == 6
    out = sidecar.exec(envs[0]["env_id"], "echo $PORT_WEB $PORT_DB")
    assert out["stdout"].split() == [str(envs[0]["ports"]["web"]), str(envs[0]["ports"]["db"])]
    sidecar.http.delete(f"/envs/{envs[0]['env_id']}")
    reserved = sidecar.http.get("/stats").json()["ports"]["reserved"]
    assert sorted(map(int, reserved)) == sorted(ports[2:])


def test_snapshot_then_create_from_it(sidecar, base):
    env = sidecar.create(base)["env_id"]
    sidecar.exec(env, "echo v2 > README && rm pkg/mod.py && echo new > new.txt")
    snap = sidecar.http.post(f"/envs/{env}/snapshot").json()["snapshot"]
    clone = sidecar.create(base, snapshot=snap)["env_id"]
    assert sidecar.exec(clone, "cat README new.txt; ls pkg")["stdout"] == "v2\nnew\n"
    sidecar.http.delete(f"/envs/{env}")
    assert snap in sidecar.http.get("/stats").json()["disk"]["layers"]  # still used


def test_pause_unmounts_and_resume_restores(sidecar, base):
    env = sidecar.create(base)["env_id"]
    sidecar.exec(env, "echo kept > k")
    assert sidecar.http.post(f"/envs/{env}/pause").json()["state"] == "paused"
    assert sidecar.mounts_under(sidecar.root / "envs" / env) == []
    assert sidecar.http.post(f"/envs/{env}/resume").json()["state"] == "running"
    assert str(sidecar.root / "envs" / env / "merged") in sidecar.mounts_under(sidecar.root)
    assert sidecar.exec(env, "cat k")["stdout"] == "kept\n"


def test_stats_and_metrics_report_bytes_per_env_program_and_total(sidecar, base):
    env = sidecar.create(base, program_id="prog-a")["env_id"]
    sidecar.exec(env, "head -c 300000 /dev/urandom > blob")
    time.sleep(1.5)  # one GC tick refreshes the byte counts
    stats = sidecar.http.get("/stats").json()
    assert stats["disk"]["by_env"][env] >= 300000
    assert stats["disk"]["by_program"]["prog-a"] == stats["disk"]["by_env"][env]
    assert stats["disk"]["total_bytes"] >= 300000
    metrics = sidecar.http.get("/metrics").text
    assert 'thunderagent_sidecar_disk_program_bytes{program="prog-a"}' in metrics
    assert "thunderagent_sidecar_execs_total 1.0" in metrics


def test_100_concurrent_creates_and_destroys_leave_consistent_state(start_sidecar, base):
    sidecar = start_sidecar("--allow-network")

    def cycle(i):
        created = sidecar.http.post("/envs", json={"program_id": f"p{i % 7}",
                                                   "base_dir": str(base), "ports": ["web"],
                                                   "limits": {"network": True}})
        assert created.status_code == 201, created.text
        env_id = created.json()["env_id"]
        if i % 2:
            assert sidecar.http.delete(f"/envs/{env_id}").json()["destroyed"] is True
        return env_id

    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(cycle, range(100)))
    kept = sorted(ids[0::2])
    listed = sorted(e["env_id"] for e in sidecar.http.get("/envs").json()["envs"])
    assert listed == kept
    stats = sidecar.http.get("/stats").json()
    assert sorted(stats["ports"]["reserved"].values()) == kept
    assert sorted(os.listdir(sidecar.root / "envs")) == kept
    merged = [p for p in sidecar.mounts_under(sidecar.root / "envs") if p.endswith("/merged")]
    assert len(merged) == 50  # one workspace each, in the sidecar's own mount namespace
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda e: sidecar.http.delete(f"/envs/{e}"), kept))
    assert os.listdir(sidecar.root / "envs") == []
    assert sidecar.mounts_under(sidecar.root) == []


def test_fifo_directory_and_through_a_file_paths_are_400_without_blocking(sidecar, base):
    env = sidecar.create(base)["env_id"]
    sidecar.exec(env, "mkfifo pipe")
    quick = httpx.Client(base_url=sidecar.url, timeout=5, headers=sidecar.http.headers)
    got = quick.get(f"/envs/{env}/files/pipe")  # open() of a FIFO with no writer would hang
    assert got.status_code == 400 and "not a regular file" in got.json()["detail"]
    put = quick.put(f"/envs/{env}/files/pipe", content=b"x")
    assert put.status_code == 400, put.text
    assert quick.get(f"/envs/{env}/files/pkg").status_code == 400
    under_a_file = quick.put(f"/envs/{env}/files/README/x", content=b"x")
    assert under_a_file.status_code == 400 and "is a file" in under_a_file.json()["detail"]
    assert quick.delete(f"/envs/{env}").json()["destroyed"] is True


def test_exec_env_names_that_would_set_another_variable_are_400(sidecar, base):
    env = sidecar.create(base)["env_id"]
    for name in ("A=B", "-u", "1X", ""):
        got = sidecar.http.post(f"/envs/{env}/exec", json={"cmd": "true", "env": {name: "v"}})
        assert got.status_code == 400 and "variable names" in got.json()["detail"], name
    assert sidecar.exec(env, "echo $_OK1", env={"_OK1": "a=b"})["stdout"] == "a=b\n"


def _peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def test_output_beyond_max_output_is_counted_not_held_in_memory(sidecar, base):
    env = sidecar.create(base)["env_id"]
    before = _peak_rss(sidecar.proc.pid)
    out = sidecar.exec(env, "head -c 300000000 /dev/zero | tr '\\0' x")
    kept = 1 << 20  # the sidecar's max_output
    assert out["stdout"] == "x" * kept + f"\n[... {300_000_000 - kept} more bytes cut]"
    assert _peak_rss(sidecar.proc.pid) - before < 64 << 20  # not the 300 MB it printed


def test_failed_resume_leaves_nothing_mounted_and_can_be_retried(sidecar, base):
    env = sidecar.create(base, limits={"disk": "16M"})["env_id"]
    sidecar.exec(env, "echo kept > k")
    sidecar.http.post(f"/envs/{env}/pause")
    env_dir = f"{sidecar.root}/envs/{env}"

    def mount_points() -> list[str]:  # one entry per mount, stacked ones included
        points = [line.split()[4] for line in open(f"/proc/{sidecar.proc.pid}/mountinfo")]
        return sorted(p.removeprefix(env_dir) for p in points if p.startswith(env_dir + "/"))

    moved = base.with_name("base-moved")
    base.rename(moved)
    for _ in range(2):  # a retry must not mount the disk image a second time
        got = sidecar.http.post(f"/envs/{env}/resume")
        assert got.status_code == 400 and "not a directory" in got.json()["detail"]
        assert mount_points() == []
    moved.rename(base)
    assert sidecar.http.post(f"/envs/{env}/resume").json()["state"] == "running"
    assert sidecar.exec(env, "cat k")["stdout"] == "kept\n"
    assert mount_points() == ["/lower/0", "/merged", "/store", "/view"]
