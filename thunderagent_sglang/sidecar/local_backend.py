"""The ``local`` backend: an overlayfs workspace per environment, commands in new namespaces.

Layout under ROOT: ``envs/ID/{disk.img, store/{upper,work}, view, lower/N, merged}``,
``layers/NAME`` (frozen upper dirs of snapshots), ``etc`` (the jails' generated /etc) and
``jail`` (the empty mount point each command's namespace mounts its root on). The base
directory or root filesystem is shared read-only by every clone. Every layer enters the overlay
through an idmapped clone (``view``, ``lower/N``; see ``idmap``), so the sandbox user owns in
the workspace what root owns on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time

from thunderagent_sglang.sidecar import cgroups, disk, idmap, jail, procs, sandbox_etc
from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, EnvSpec, ExecResult
from thunderagent_sglang.sidecar.errors import (BackendUnavailable, BadRequest, DiskFull,
                                                NotFound, Unenforceable)
from thunderagent_sglang.sidecar.paths import inside, relative_parts
from thunderagent_sglang.sidecar.settings import DEFAULT_SANDBOX_UID

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/tmp", "LANG": "C.UTF-8"}
TOOLS = ("unshare", "setpriv", "mount", "umount", "mkfs.ext4", "ip")


class LocalBackend(Backend):
    name = "local"
    persistent = True

    def __init__(self, root: str, sandbox_uid: int = DEFAULT_SANDBOX_UID):
        self.root = root
        self.sandbox_uid = sandbox_uid
        self.envs_dir = os.path.join(root, "envs")
        self.layers_dir = os.path.join(root, "layers")
        self.jail_root = os.path.join(root, "jail")
        self.etc_dir = os.path.join(root, "etc")
        self.userns_fd = -1  # the idmapping's user namespace, made by probe
        self.cgroups = cgroups.Cgroups(_tag(root), {}, dict.fromkeys(
            cgroups.CONTROLLERS, "the backend was not probed"))

    # -- capability and sweep -------------------------------------------------------------
    def probe(self) -> None:
        missing = []
        if os.geteuid() != 0:
            missing.append("root (mounts and namespaces)")
        for tool in TOOLS:
            if shutil.which(tool) is None:
                missing.append(f"the {tool} command")
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                missing.append("overlayfs in the kernel (modprobe overlay)")
        if missing:
            raise BackendUnavailable(
                "the local backend needs " + ", ".join(missing)
                + "; install util-linux, e2fsprogs and iproute2 and run as root, or use "
                "--backend docker")
        for d in (self.envs_dir, self.layers_dir, self.jail_root):
            os.makedirs(d, exist_ok=True)
        if self.userns_fd < 0:
            self.userns_fd = idmap.make_userns(self.sandbox_uid)
        idmap.check(self.layers_dir, self.jail_root, self.userns_fd)
        sandbox_etc.generate(self.etc_dir, self.sandbox_uid)
        self.cgroups = cgroups.detect(_tag(self.root))

    def check_limits(self, spec: EnvSpec) -> None:
        self.cgroups.check(limits_of(spec))
        if spec.root and spec.image and not spec.base_dir and not _has_setpriv(spec.image):
            raise Unenforceable(f"root in the root filesystem {spec.image!r} needs setpriv "
                                "(util-linux) in it to drop the dangerous capabilities: install "
                                "it there, or run without root")

    def sweep(self, keep_layers: frozenset[str] = frozenset(),
              keep_envs: frozenset[str] = frozenset()) -> list[str]:
        removed = [f"process {pid}" for pid in procs.kill_marked(f"{jail.MARK}:{self.root}:")]
        groups = self.cgroups if self.cgroups.found else cgroups.detect(_tag(self.root))
        removed += groups.sweep()
        removed += [f"mount {p}" for p in disk.unmount_all_under(self.root)]
        removed += _remove_children(self.envs_dir, keep=keep_envs)
        removed += _remove_children(self.layers_dir, keep=keep_layers)
        return removed

    # -- lifecycle -------------------------------------------------------------------------
    def materialize(self, env: EnvRecord) -> None:
        lowers = self._lowers(env)
        d = self._dir(env)
        for sub in ("store", "view", "merged"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        try:
            if env.spec.disk:
                image = os.path.join(d, "disk.img")
                disk.make_image(image, max(env.spec.disk, disk.MIN_CAP))
                disk.mount_image(image, os.path.join(d, "store"))
            for sub in ("upper", "work"):
                os.makedirs(os.path.join(d, "store", sub), exist_ok=True)
            self._mount(env, lowers)
            self.cgroups.create(env.env_id, limits_of(env.spec))
        except Exception:
            self.destroy(env)
            raise

    def interrupt(self, env: EnvRecord) -> None:
        for proc in list(env.procs):
            procs.kill_tree(proc)

    def destroy(self, env: EnvRecord) -> None:
        self.interrupt(env)
        self.cgroups.remove(env.env_id)
        d = self._dir(env)
        disk.unmount_all_under(d)
        shutil.rmtree(d, ignore_errors=True)

    def pause(self, env: EnvRecord) -> None:
        disk.unmount_all_under(self._dir(env))  # merged, the idmapped clones, the disk image

    def materialized(self, env: EnvRecord) -> bool:
        d = self._dir(env)
        return os.path.isfile(os.path.join(d, "disk.img")) or os.path.isdir(
            os.path.join(d, "store", "upper"))

    def resume(self, env: EnvRecord) -> None:
        lowers = self._lowers(env)
        d = self._dir(env)
        try:
            self.cgroups.create(env.env_id, limits_of(env.spec))  # gone if the sidecar restarted
            if env.spec.disk:
                disk.mount_image(os.path.join(d, "disk.img"), os.path.join(d, "store"))
            self._mount(env, lowers)
        except Exception:
            self.pause(env)  # a retry must not stack a second mount of the same image
            raise

    # -- work ------------------------------------------------------------------------------
    def exec(self, env, cmd, cwd, env_vars, timeout, max_output) -> ExecResult:
        parts = relative_parts(cwd or ".")
        top = "/workspace" if env.spec.base_dir else ""
        jail_cwd = "/".join([top, *parts]) or "/"
        where = jail.Jail("host" if env.spec.base_dir else "rootfs", self.workspace(env),
                          self.jail_root, self.etc_dir, 0 if env.spec.root else self.sandbox_uid,
                          env.spec.network, f"{self.root}:{env.env_id}")
        argv = jail.command(where, jail_cwd, {**BASE_ENV, **env_vars}, cmd)
        limits = limits_of(env.spec)
        if limits:
            argv = self.cgroups.join_argv(env.env_id, limits) + argv
        start, started = time.monotonic(), []
        try:
            done = procs.run(argv, BASE_ENV, timeout, max_output,
                             lambda proc: _register(env, proc, started))
        finally:
            with env.lock:
                env.procs.difference_update(started)
        full = bool(env.spec.disk) and ("No space left on device" in done.stderr
                                        or disk.is_full(os.path.join(self._dir(env), "store")))
        return ExecResult(done.returncode, done.stdout, done.stderr, done.timed_out,
                          time.monotonic() - start, full)

    def read_file(self, env, path) -> bytes:
        fd = self._open(env, path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write_file(self, env, path, data) -> None:
        if not relative_parts(path):
            raise BadRequest("give a file path inside the workspace, not its root")
        target = inside(self.workspace(env), path)
        try:
            _make_dirs(os.path.dirname(target), self.sandbox_uid)
            fd = self._open(env, path, os.O_WRONLY | os.O_CREAT)
            with os.fdopen(fd, "wb") as f:
                os.fchown(f.fileno(), self.sandbox_uid, self.sandbox_uid)  # the sandbox's file
                f.truncate()
                f.write(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"environment {env.env_id} reached its disk cap of {env.spec.disk} bytes: "
                    "delete files in it, or create it with a larger limits.disk") from None
            if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):  # EEXIST: a file
                raise BadRequest(f"cannot write {path!r}: {exc.strerror} (a path component "
                                 "is a file, or the path a directory)") from None
            raise

    def snapshot(self, env, name) -> None:
        target = self._layer_path(name)
        os.makedirs(target)
        try:
            disk.run(["cp", "-a", os.path.join(self._dir(env), "store", "upper") + "/.", target],
                     "copying the environment's changes into a snapshot layer")
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def remove_layer(self, name) -> None:
        shutil.rmtree(self._layer_path(name), ignore_errors=True)

    def disk_bytes(self, env) -> int:
        d = self._dir(env)
        if env.spec.disk:
            return disk.file_blocks(os.path.join(d, "disk.img"))
        return disk.used_bytes(os.path.join(d, "store"))

    def layer_bytes(self, name) -> int:
        return disk.used_bytes(self._layer_path(name))

    def workspace(self, env: EnvRecord) -> str:
        return os.path.join(self._dir(env), "merged")

    # -- helpers ---------------------------------------------------------------------------
    def _dir(self, env: EnvRecord) -> str:
        return os.path.join(self.envs_dir, env.env_id)

    def _layer_path(self, name: str) -> str:
        return os.path.join(self.layers_dir, name)

    def _lowers(self, env: EnvRecord) -> list[str]:
        return [self._layer_path(n) for n in env.layers] + [self._base(env)]

    def _open(self, env: EnvRecord, path: str, flags: int) -> int:
        """A descriptor of a regular file in the workspace; never follows a last-moment symlink
        and never blocks on a FIFO or device a command left there."""
        target = inside(self.workspace(env), path)
        try:
            fd = os.open(target, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise NotFound(f"no file {path!r} in environment {env.env_id}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise BadRequest(f"cannot open {path!r}: {exc.strerror}; give a regular file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadRequest(f"{path!r} is not a regular file (a directory, FIFO or device): "
                             "give a regular file")
        return fd

    def _base(self, env: EnvRecord) -> str:
        base = env.spec.base_dir or env.spec.image
        if not base or not os.path.isdir(base):
            raise BadRequest(f"{base!r} is not a directory: give an existing base_dir, or a "
                             "root filesystem directory as image")
        return os.path.realpath(base)

    def _mount(self, env: EnvRecord, lowers: list[str]) -> None:
        """The overlay, each layer through an idmapped clone (root's files are the sandbox's)."""
        d = self._dir(env)
        view = os.path.join(d, "view")
        idmap.clone(os.path.join(d, "store"), view, self.userns_fd)
        mapped = []
        for i, lower in enumerate(lowers):
            target = os.path.join(d, "lower", str(i))
            os.makedirs(target, exist_ok=True)
            idmap.clone(lower, target, self.userns_fd)
            mapped.append(target)
        disk.mount_overlay(mapped, os.path.join(view, "upper"), os.path.join(view, "work"),
                           self.workspace(env))


def limits_of(spec: EnvSpec) -> dict[str, float]:
    """The cgroup limits an environment asked for, by controller."""
    wanted = {"memory": spec.memory, "pids": spec.pids, "cpu": spec.cpus}
    return {controller: value for controller, value in wanted.items() if value is not None}


def _make_dirs(path: str, uid: int) -> None:
    """``os.makedirs``, each directory it creates given to the sandbox user."""
    if os.path.isdir(path):
        return
    _make_dirs(os.path.dirname(path), uid)
    os.mkdir(path)
    os.chown(path, uid, uid)


def _has_setpriv(rootfs: str) -> bool:
    return any(os.path.exists(os.path.join(rootfs, d, "setpriv"))
               for d in ("usr/bin", "bin", "usr/sbin", "sbin"))


def _register(env: EnvRecord, proc, started: list) -> None:
    """Makes ``proc`` killable by destroy; kills it at once if a destroy has begun."""
    started.append(proc)
    with env.lock:
        env.procs.add(proc)
        doomed = env.destroying or env.destroyed
    if doomed:
        procs.kill_tree(proc)


def _tag(root: str) -> str:
    return hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]


def _remove_children(directory: str, keep: frozenset[str] = frozenset()) -> list[str]:
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name not in keep:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(f"directory {os.path.join(directory, name)}")
    return removed
