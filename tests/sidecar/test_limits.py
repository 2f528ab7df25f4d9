"""Memory, pids and cpu limits of the local backend: enforced in cgroups, or refused (422).

The enforcement tests run real commands on a real sidecar and skip, with the reason, where this
host has no writable hierarchy for the controller. The cgroup file logic for v2 and v1 is also
pinned on fake hierarchies, so it is checked on hosts of either kind.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time

import httpx
import pytest

from thunderagent_sglang.sidecar import cgroups
from thunderagent_sglang.sidecar.errors import BackendUnavailable, Unenforceable
from thunderagent_sglang.sidecar.local_backend import LocalBackend
from tests.sidecar.conftest import MISSING, needs_local


def _probe_host() -> tuple[LocalBackend, dict[str, str]]:
    """This host's local backend, and controller -> why it cannot enforce it (empty: it can)."""
    backend = LocalBackend("/tmp/thunderagent-sidecar-probe")
    if MISSING:
        return backend, dict.fromkeys(cgroups.CONTROLLERS, MISSING)
    try:
        backend.probe()
    except BackendUnavailable as exc:
        return backend, dict.fromkeys(cgroups.CONTROLLERS, str(exc))
    return backend, backend.cgroups.missing


HOST, GAPS = _probe_host()


def needs(*controllers: str):
    gaps = [f"{c}: {GAPS[c]}" for c in controllers if c in GAPS]
    return pytest.mark.skipif(bool(gaps), reason=f"no writable cgroup here ({'; '.join(gaps)})")


def _env_cgroups(env_id: str) -> list[str]:
    """This environment's cgroup directories in every hierarchy of this host."""
    parents = {h.parent for h in HOST.cgroups.found.values()}
    return sorted(p for parent in parents for p in glob.glob(f"{parent}/*-{env_id}"))


# -- enforcement on a real sidecar -----------------------------------------------------------
@needs_local
@needs("pids")
def test_pids_limit_stops_forks_at_exactly_the_limit(sidecar, base):
    env = sidecar.create(base, limits={"pids": 20})["env_id"]
    # In the cgroup: unshare, the jail's shell (pid 1), the command's shell, then 17 sleeps: the
    # 18th fork fails and dash exits 2.
    out = sidecar.exec(env, "i=0; while :; do sleep 60 & i=$((i+1)); echo $i; done")
    assert out["exit_code"] == 2 and "Cannot fork" in out["stderr"], out
    assert out["stdout"].split()[-1] == "17"
    # The jail's exit ended the sleeps: the next command has the whole budget again.
    assert sidecar.exec(env, "sleep 0 & wait; echo ok")["stdout"] == "ok\n"


@needs_local
@needs("memory")
def test_memory_limit_kills_a_process_allocating_more(sidecar, base):
    env = sidecar.create(base, limits={"memory": "64M"})["env_id"]
    fill = "x=$(head -c {} /dev/zero | tr '\\0' a); echo ${{#x}}"
    small = sidecar.exec(env, fill.format(8_000_000))
    assert (small["exit_code"], small["stdout"]) == (0, "8000000\n")
    big = sidecar.exec(env, fill.format(200_000_000))
    assert (big["exit_code"], big["timed_out"], big["stdout"]) == (137, False, "")


@needs_local
@needs("cpu")
def test_cpu_limit_throttles_a_busy_loop(sidecar, base):
    env = sidecar.create(base, limits={"cpus": 0.2})["env_id"]
    out = sidecar.exec(env, "timeout 2 sh -c 'while :; do :; done'; times")
    # `times`, second line: the CPU time of waited children, user then system.
    user, system = (float(m) * 60 + float(s) for m, s in
                    re.findall(r"(\d+)m([\d.]+)s", out["stdout"].splitlines()[1]))
    assert 0 < user + system <= 0.2 * 2 + 0.2, out  # unlimited, the loop would use ~2 s


@needs_local
@needs("memory", "pids", "cpu")
def test_env_cgroups_hold_the_limits_and_go_with_destroy(sidecar, base):
    env = sidecar.create(base, limits={"memory": "64M", "pids": 50, "cpus": 1.5})
    assert env["limits"] | {"disk": None} == {"disk": None, "memory": 64 << 20, "pids": 50,
                                               "cpus": 1.5, "network": False}
    expected = {}  # v2: memory.max 67108864, pids.max 50, cpu.max "150000 100000"; v1 alike
    for controller, value in (("memory", 64 << 20), ("pids", 50), ("cpu", 1.5)):
        version = HOST.cgroups.found[controller].version
        expected |= {name: text for name, text, required
                     in cgroups.limit_files(version, controller, value) if required}
    written = {name: open(os.path.join(d, name)).read().strip()
               for d in _env_cgroups(env["env_id"]) for name in expected
               if os.path.exists(os.path.join(d, name))}
    assert written == expected
    assert sidecar.http.delete(f"/envs/{env['env_id']}").json()["destroyed"] is True
    assert _env_cgroups(env["env_id"]) == []


@needs_local
@needs("pids")
def test_kill_9_then_restart_removes_env_cgroups_and_their_processes(start_sidecar, base):
    sc = start_sidecar()
    env = sc.create(base, limits={"pids": 64})["env_id"]

    def long_exec():
        try:
            sc.http.post(f"/envs/{env}/exec", json={"cmd": "sleep 1007", "timeout": 300})
        except httpx.TransportError:
            pass  # the sidecar is killed under it

    threading.Thread(target=long_exec, daemon=True).start()
    [pids_dir] = [d for d in _env_cgroups(env) if os.path.exists(f"{d}/pids.max")]
    deadline = time.monotonic() + 10
    while open(f"{pids_dir}/cgroup.procs").read().split() == []:
        assert time.monotonic() < deadline, "the command never joined its cgroup"
        time.sleep(0.05)
    sc.kill9()
    assert _env_cgroups(env) != []  # the crash left it ...
    again = start_sidecar()  # ... and the restart sweeps it, with the sleep in it
    assert _env_cgroups(env) == []
    assert f"cgroup {pids_dir}" in again.read_log()


# -- refusal where a limit cannot be enforced -------------------------------------------------
@needs_local
def test_create_with_limits_is_422_where_no_cgroup_is_mounted(start_sidecar, base):
    # The sidecar in its own mount namespace, where no cgroup hierarchy is mounted.
    hide = ["unshare", "--mount", "--", "sh", "-c",
            'umount -R /sys/fs/cgroup && exec "$@"', "hide-cgroups"]
    sc = start_sidecar(wrap=hide)
    refused = sc.http.post("/envs", json={"program_id": "p", "base_dir": str(base),
                                          "limits": {"memory": "64M", "cpus": 1}})
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "limits.memory: no cgroup v2 or v1 hierarchy mounted here offers the memory" in detail
    assert "limits.cpus: no cgroup v2 or v1 hierarchy mounted here offers the cpu" in detail
    assert "limits.pids" not in detail and "--backend docker" in detail
    assert sc.http.get("/stats").json()["envs"] == 0
    assert sc.create(base, limits={"disk": "16M"})["limits"]["disk"] == 16 << 20  # no cgroup needed


def test_check_names_each_unenforceable_limit_and_passes_the_rest():
    cg = cgroups.Cgroups("t", {"pids": cgroups.Hierarchy(1, "/x")},
                         {"memory": "Read-only file system (/sys/fs/cgroup/memory)"})
    cg.check({"pids": 5})
    with pytest.raises(Unenforceable) as exc:
        cg.check({"pids": 5, "memory": 1 << 30})
    assert exc.value.status == 422
    assert str(exc.value).startswith(
        "the local backend cannot enforce limits.memory: Read-only file system "
        "(/sys/fs/cgroup/memory). Drop those limits")


# -- the cgroup files, on fake hierarchies ---------------------------------------------------
def _fake_host(tmp_path, mountinfo_lines: list[str], own: str):
    (tmp_path / "mountinfo").write_text("".join(line + "\n" for line in mountinfo_lines))
    (tmp_path / "own").write_text(own)
    return str(tmp_path / "mountinfo"), str(tmp_path / "own")


def _files(directory) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


def test_v2_one_cgroup_per_env_with_max_files(tmp_path):
    top = tmp_path / "cg"
    top.mkdir()
    (top / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (top / "cgroup.subtree_control").write_text("cpu memory pids\n")
    info, own = _fake_host(tmp_path, [
        f"41 31 0:38 / {top} rw,relatime - cgroup2 cgroup2 rw"], "0::/user.slice/x.scope\n")
    cg = cgroups.detect("tag", mountinfo=info, own_cgroup=own)
    parent = str(top / cgroups.PARENT)
    assert cg.missing == {} and cg.found == dict.fromkeys(cgroups.CONTROLLERS,
                                                          cgroups.Hierarchy(2, parent))
    limits = {"memory": 64 << 20, "pids": 20, "cpu": 0.5}
    assert cg.create("env-1", limits) == [f"{parent}/tag-env-1"]
    assert _files(top / cgroups.PARENT / "tag-env-1") == {
        "cpu.max": "50000 100000", "memory.max": "67108864", "pids.max": "20"}
    assert cg.join_argv("env-1", limits)[3:] == [
        "thunderagent-cgroup-join", f"{parent}/tag-env-1/cgroup.procs", "--"]


def test_v1_cgroups_nest_under_the_sidecars_own_and_missing_pids_is_named(tmp_path):
    for name in ("memory/job/7", "cpu,cpuacct"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "cgroup.procs").write_text("")
    info, own = _fake_host(tmp_path, [
        f"32 31 0:29 / {tmp_path}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        f"35 31 0:32 / {tmp_path}/memory rw - cgroup cgroup rw,memory"],
        "4:memory:/job/7\n2:cpu,cpuacct:/\n0::/\n")
    cg = cgroups.detect("tag", mountinfo=info, own_cgroup=own)
    assert cg.found == {
        "memory": cgroups.Hierarchy(1, f"{tmp_path}/memory/job/7/{cgroups.PARENT}"),
        "cpu": cgroups.Hierarchy(1, f"{tmp_path}/cpu,cpuacct/{cgroups.PARENT}")}
    assert cg.missing == {"pids": "no cgroup v2 or v1 hierarchy mounted here offers the pids "
                                  "controller"}
    cg.create("env-1", {"memory": 64 << 20, "cpu": 2})
    assert _files(tmp_path / "memory/job/7" / cgroups.PARENT / "tag-env-1") == {
        "memory.limit_in_bytes": "67108864"}
    assert _files(tmp_path / "cpu,cpuacct" / cgroups.PARENT / "tag-env-1") == {
        "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "200000"}
    with pytest.raises(Unenforceable, match="limits.pids"):
        cg.create("env-2", {"pids": 5})


def test_a_hierarchy_covered_by_another_mount_is_not_used(tmp_path):
    (tmp_path / "pids").mkdir()  # no cgroup.procs: what a tmpfs mounted over it shows
    info, own = _fake_host(tmp_path, [
        f"39 31 0:36 / {tmp_path}/pids rw - cgroup cgroup rw,pids"], "8:pids:/\n")
    cg = cgroups.detect("tag", mountinfo=info, own_cgroup=own)
    assert cg.found == {}
    assert cg.missing["pids"] == (f"{tmp_path}/pids is not a cgroup directory (is another "
                                  "mount over it?)")
    assert os.listdir(tmp_path / "pids") == []
