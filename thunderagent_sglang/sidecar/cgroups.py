"""Memory, pids and cpu limits of local environments, enforced in cgroups (v2, else v1).

A limited environment gets a cgroup named ``TAG-ENV_ID`` (TAG: a hash of the sidecar root, so
the orphan sweep removes only its own) in each hierarchy it needs, under a parent the sidecar
owns, ``thunderagent-sidecar``, made with the first such cgroup and removed with the last (an
empty cgroup left behind would keep whoever owns the cgroup above from removing theirs):

- v2 (a ``cgroup2`` mount whose ``cgroup.controllers`` lists the controller): the parent sits at
  the top of the mount, because v2 lets only a cgroup without processes hand controllers to its
  children, and the sidecar's own cgroup holds the sidecar.
- v1 (one ``cgroup`` mount per controller, as on hybrid hosts): the parent sits under the
  sidecar's own cgroup, so whatever limits and accounts the sidecar also covers its environments.

Every process of an exec joins before ``unshare`` runs (``join_argv``), so none escapes a limit.
A controller without a writable hierarchy is listed in ``missing`` with the reason, and a create
asking for its limit is refused (422): a limit is never silently dropped.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from dataclasses import dataclass

from thunderagent_sglang.sidecar.disk import unescape
from thunderagent_sglang.sidecar.errors import SidecarError, Unenforceable

log = logging.getLogger("thunderagent_sglang.sidecar")
PARENT = "thunderagent-sidecar"
CONTROLLERS = ("memory", "pids", "cpu")
LIMIT_FIELD = {"memory": "memory", "pids": "pids", "cpu": "cpus"}  # controller -> limits.<field>
CPU_PERIOD_US = 100_000
_JOIN = ('while [ "$1" != -- ]; do echo $$ > "$1" || { echo "thunderagent sidecar: cannot join '
         'the cgroup $1" >&2; exit 125; }; shift; done; shift; exec "$@"')


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    parent: str  # the sidecar's parent cgroup directory in this hierarchy (made on demand)


@dataclass(frozen=True)
class CgroupMount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    point: str  # where it is mounted
    root: str  # the cgroup the mount shows at its top
    options: frozenset[str]  # v1: the controllers it carries


class Cgroups:
    """Per-environment cgroups: ``check`` at create, ``create``, ``join_argv``, ``remove``."""

    def __init__(self, tag: str, found: dict[str, Hierarchy], missing: dict[str, str]):
        self.tag, self.found, self.missing = tag, found, missing

    def check(self, limits: dict[str, float]) -> None:
        """Raises Unenforceable naming each requested limit this host cannot enforce."""
        refused = [c for c in limits if c in self.missing]
        if refused:
            why = "; ".join(f"limits.{LIMIT_FIELD[c]}: {self.missing[c]}" for c in refused)
            raise Unenforceable(
                f"the local backend cannot enforce {why}. Drop those limits, run the sidecar as "
                "root where /sys/fs/cgroup is mounted read-write, or use --backend docker")

    def create(self, env_id: str, limits: dict[str, float]) -> list[str]:
        """Makes the environment's cgroups and writes its limits; returns their directories."""
        self.check(limits)
        made = []
        for controller, value in limits.items():
            h = self.found[controller]
            path = os.path.join(h.parent, self._name(env_id))
            try:
                _make(h, controller, path)
                for filename, text, required in limit_files(h.version, controller, value):
                    _write(os.path.join(path, filename), text, required)
            except OSError as exc:
                raise SidecarError(f"setting limits.{LIMIT_FIELD[controller]}={value} in {path} "
                                   f"failed ({exc.strerror}): give a larger value or drop "
                                   "the limit") from None
            made += [path] if path not in made else []
        return made

    def join_argv(self, env_id: str, limits: dict[str, float]) -> list[str]:
        """A prefix for an argv: the process joins the environment's cgroups, then execs it."""
        procs = sorted({os.path.join(self.found[c].parent, self._name(env_id), "cgroup.procs")
                        for c in limits})
        return ["/bin/sh", "-c", _JOIN, "thunderagent-cgroup-join", *procs, "--"]

    def remove(self, env_id: str) -> list[str]:
        """Kills what runs in the environment's cgroups and removes them (idempotent)."""
        paths = {os.path.join(h.parent, self._name(env_id)) for h in self.found.values()}
        removed = [p for p in sorted(paths) if remove_cgroup(p)]
        self._drop_empty_parents()
        return removed

    def sweep(self) -> list[str]:
        """Removes every cgroup of this sidecar root that a crashed run left."""
        removed = []
        for parent in sorted({h.parent for h in self.found.values()}):
            for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
                if name.startswith(self.tag + "-") and remove_cgroup(os.path.join(parent, name)):
                    removed.append(f"cgroup {os.path.join(parent, name)}")
        self._drop_empty_parents()
        return removed

    def _drop_empty_parents(self) -> None:
        for parent in {h.parent for h in self.found.values()}:
            try:
                os.rmdir(parent)  # fails while another environment (or sidecar) has a cgroup
            except OSError:
                pass

    def _name(self, env_id: str) -> str:
        return f"{self.tag}-{env_id}"


def limit_files(version: int, controller: str, value: float) -> list[tuple[str, str, bool]]:
    """(file, content, required) for one limit. Optional files exist only on some kernels."""
    if controller == "memory":
        if version == 2:  # no swap: over the limit means the OOM killer, not a slow crawl
            return [("memory.max", str(int(value)), True), ("memory.swap.max", "0", False)]
        return [("memory.limit_in_bytes", str(int(value)), True),
                ("memory.memsw.limit_in_bytes", str(int(value)), False)]
    if controller == "pids":
        return [("pids.max", str(int(value)), True)]
    quota = max(1000, round(value * CPU_PERIOD_US))  # the kernel's minimum quota is 1 ms
    if version == 2:
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}", True)]
    return [("cpu.cfs_period_us", str(CPU_PERIOD_US), True), ("cpu.cfs_quota_us", str(quota), True)]


def detect(tag: str, mountinfo: str = "/proc/self/mountinfo",
           own_cgroup: str = "/proc/self/cgroup") -> Cgroups:
    """Finds a writable hierarchy for each controller and makes the sidecar's parent in it."""
    mounts = read_mounts(mountinfo)
    own = read_own_cgroups(own_cgroup)
    found, missing = {}, {}
    for controller in CONTROLLERS:
        try:
            found[controller] = _hierarchy(controller, mounts, own)
        except OSError as exc:
            missing[controller] = f"{exc.strerror or exc} ({exc.filename or 'cgroup'})"
        except LookupError as exc:
            missing[controller] = str(exc.args[0])
    return Cgroups(tag, found, missing)


def read_mounts(mountinfo: str) -> list[CgroupMount]:
    mounts = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append(CgroupMount(fstype, unescape(fields[4]), unescape(fields[3]),
                                          frozenset(options.split(","))))
    return mounts


def read_own_cgroups(path: str) -> dict[str, str]:
    """Controller -> the sidecar's cgroup in it; the v2 cgroup under the key ``""``."""
    own = {}
    with open(path) as f:
        for line in f:
            _, controllers, cgroup = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = cgroup
    return own


def _hierarchy(controller: str, mounts: list[CgroupMount], own: dict[str, str]) -> Hierarchy:
    for m in mounts:
        if m.fstype == "cgroup2" and controller in _read(f"{m.point}/cgroup.controllers").split():
            return _v2(m.point, controller)
    for m in mounts:
        if m.fstype == "cgroup" and controller in m.options:
            return _v1(m, own.get(controller, "/"), controller)
    raise LookupError(f"no cgroup v2 or v1 hierarchy mounted here offers the {controller} "
                      "controller")


def _v2(point: str, controller: str) -> Hierarchy:
    _enable(point, controller)
    h = Hierarchy(2, os.path.join(point, PARENT))
    _try_parent(h, controller)
    return h


def _v1(mount: CgroupMount, mine: str, controller: str) -> Hierarchy:
    relative = os.path.relpath(mine, mount.root)
    if relative.startswith(".."):  # the sidecar's cgroup is outside what is mounted
        relative = "."
    base = os.path.normpath(os.path.join(mount.point, relative))
    if not os.path.exists(os.path.join(base, "cgroup.procs")):
        raise LookupError(f"{base} is not a cgroup directory (is another mount over it?)")
    h = Hierarchy(1, os.path.join(base, PARENT))
    _try_parent(h, controller)
    return h


def _try_parent(h: Hierarchy, controller: str) -> None:
    """Proves the parent can be made (raises OSError saying why not), leaving nothing new."""
    existed = os.path.isdir(h.parent)
    os.makedirs(h.parent, exist_ok=True)
    if h.version == 2:
        _enable(h.parent, controller)
    if not existed:
        try:
            os.rmdir(h.parent)
        except OSError:
            pass  # another sidecar's cgroup appeared in it meanwhile


def _make(h: Hierarchy, controller: str, path: str) -> None:
    """Makes the cgroup ``path`` under ``h.parent``, (re)making the parent as needed."""
    for attempt in range(3):
        os.makedirs(h.parent, exist_ok=True)
        if h.version == 2:
            _enable(h.parent, controller)
        try:
            os.mkdir(path)
            return
        except FileExistsError:
            return
        except FileNotFoundError:
            if attempt == 2:  # the parent keeps vanishing: another sidecar removes it
                raise


def _enable(cgroup: str, controller: str) -> None:
    """Lets ``cgroup``'s children use ``controller`` (v2 ``cgroup.subtree_control``)."""
    control = os.path.join(cgroup, "cgroup.subtree_control")
    if controller not in _read(control).split():
        with open(control, "w") as f:
            f.write(f"+{controller}")


def remove_cgroup(path: str, limit: float = 5.0) -> bool:
    """SIGKILLs every process in ``path`` and removes it; False if there was none."""
    deadline = time.monotonic() + limit
    while os.path.isdir(path):
        _kill_members(path)
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning("cgroup %s not removed (%s); the next start sweeps it", path, exc)
                return False
            time.sleep(0.01)
    return False


def _kill_members(path: str) -> None:
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        _write(os.path.join(path, "cgroup.kill"), "1", False)
        return
    for pid in _read(os.path.join(path, "cgroup.procs")).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _write(path: str, text: str, required: bool) -> None:
    if not required and not os.path.exists(path):
        return
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        if required or exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""

