"""The ``local`` backend: an overlayfs workspace per environment, commands in new namespaces.

Layout under ROOT: ``envs/ID/{disk.img, store/{upper,work}, merged}``, ``layers/NAME`` (frozen
upper dirs of snapshots) and ``jail`` (the empty mount point each command's namespace mounts
its root on). The base directory or root filesystem is shared read-only by every clone.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time

from thunderagent_sglang.sidecar import disk, jail
from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, ExecResult
from thunderagent_sglang.sidecar.errors import BackendUnavailable, BadRequest, DiskFull, NotFound
from thunderagent_sglang.sidecar.paths import inside, relative_parts

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}


class LocalBackend(Backend):
    name = "local"

    def __init__(self, root: str):
        self.root = root
        self.envs_dir = os.path.join(root, "envs")
        self.layers_dir = os.path.join(root, "layers")
        self.jail_root = os.path.join(root, "jail")

    # -- capability and sweep -------------------------------------------------------------
    def probe(self) -> None:
        missing = []
        if os.geteuid() != 0:
            missing.append("root (mounts and namespaces)")
        for tool in ("unshare", "mount", "umount", "chroot", "mkfs.ext4"):
            if shutil.which(tool) is None:
                missing.append(f"the {tool} command")
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                missing.append("overlayfs in the kernel (modprobe overlay)")
        if missing:
            raise BackendUnavailable(
                "the local backend needs " + ", ".join(missing)
                + "; install util-linux and e2fsprogs and run as root, or use --backend docker")
        for d in (self.envs_dir, self.layers_dir, self.jail_root):
            os.makedirs(d, exist_ok=True)

    def sweep(self, keep_layers: frozenset[str] = frozenset()) -> list[str]:
        removed = [f"process {pid}" for pid in _kill_marked(f"{jail.MARK}:{self.root}:")]
        removed += [f"mount {p}" for p in disk.unmount_all_under(self.root)]
        removed += _remove_children(self.envs_dir)
        removed += _remove_children(self.layers_dir, keep=keep_layers)
        return removed

    # -- lifecycle -------------------------------------------------------------------------
    def materialize(self, env: EnvRecord) -> None:
        lowers = [self._layer_path(n) for n in env.layers] + [self._base(env)]
        d = self._dir(env)
        for sub in ("store", "merged"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        try:
            if env.spec.disk:
                image = os.path.join(d, "disk.img")
                disk.make_image(image, max(env.spec.disk, disk.MIN_CAP))
                disk.mount_image(image, os.path.join(d, "store"))
            for sub in ("upper", "work"):
                os.makedirs(os.path.join(d, "store", sub), exist_ok=True)
            self._mount(env, lowers)
        except Exception:
            self.destroy(env)
            raise

    def destroy(self, env: EnvRecord) -> None:
        for proc in list(env.procs):
            _kill_tree(proc)
        d = self._dir(env)
        disk.unmount_all_under(d)
        shutil.rmtree(d, ignore_errors=True)

    def pause(self, env: EnvRecord) -> None:
        d = self._dir(env)
        disk.umount(os.path.join(d, "merged"))
        disk.umount(os.path.join(d, "store"))

    def resume(self, env: EnvRecord) -> None:
        d = self._dir(env)
        if env.spec.disk:
            disk.mount_image(os.path.join(d, "disk.img"), os.path.join(d, "store"))
        self._mount(env, [self._layer_path(n) for n in env.layers] + [self._base(env)])

    # -- work ------------------------------------------------------------------------------
    def exec(self, env, cmd, cwd, env_vars, timeout, max_output) -> ExecResult:
        parts = relative_parts(cwd or ".")
        top = "/workspace" if env.spec.base_dir else ""
        jail_cwd = "/".join([top, *parts]) or "/"
        argv = jail.command("host" if env.spec.base_dir else "rootfs", self.workspace(env),
                            self.jail_root, jail_cwd, {**BASE_ENV, **env_vars}, cmd,
                            env.spec.network, f"{self.root}:{env.env_id}")
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=BASE_ENV)
        env.procs.add(proc)
        try:
            out, err, timed_out = _communicate(proc, timeout)
        finally:
            env.procs.discard(proc)
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        full = bool(env.spec.disk) and (b"No space left on device" in err
                                        or disk.is_full(os.path.join(self._dir(env), "store")))
        return ExecResult(code, _text(out, max_output), _text(err, max_output), timed_out,
                          time.monotonic() - start, full)

    def read_file(self, env, path) -> bytes:
        target = inside(self.workspace(env), path)
        try:
            with open(target, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"no file {path!r} in environment {env.env_id}") from None
        except IsADirectoryError:
            raise BadRequest(f"{path!r} is a directory; give a file path") from None

    def write_file(self, env, path, data) -> None:
        if not relative_parts(path):
            raise BadRequest("give a file path inside the workspace, not its root")
        target = inside(self.workspace(env), path)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"environment {env.env_id} reached its disk cap of {env.spec.disk} bytes: "
                    "delete files in it, or create it with a larger limits.disk") from None
            if exc.errno in (errno.EISDIR, errno.ENOTDIR):
                raise BadRequest(f"cannot write {path!r}: {exc.strerror}") from None
            raise

    def snapshot(self, env, name) -> None:
        target = self._layer_path(name)
        os.makedirs(target)
        disk.run(["cp", "-a", os.path.join(self._dir(env), "store", "upper") + "/.", target],
                 "copying the environment's changes into a snapshot layer")

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

    def _base(self, env: EnvRecord) -> str:
        base = env.spec.base_dir or env.spec.image
        if not base or not os.path.isdir(base):
            raise BadRequest(f"{base!r} is not a directory: give an existing base_dir, or a "
                             "root filesystem directory as image")
        return os.path.realpath(base)

    def _mount(self, env: EnvRecord, lowers: list[str]) -> None:
        store = os.path.join(self._dir(env), "store")
        disk.mount_overlay(lowers, os.path.join(store, "upper"), os.path.join(store, "work"),
                           self.workspace(env))


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bytes, bool]:
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        out, err = proc.communicate(timeout=10)
        return out, err, True


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command's session; ``--kill-child`` and the pid namespace take the rest."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(data: bytes, limit: int) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return text + f"\n[... {len(data) - limit} more bytes cut]" if len(data) > limit else text


def _kill_marked(marker: str) -> list[int]:
    killed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    for pid in killed:
        _wait_gone(pid)
    return killed


def _wait_gone(pid: int, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.01)


def _remove_children(directory: str, keep: frozenset[str] = frozenset()) -> list[str]:
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name not in keep:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(f"directory {os.path.join(directory, name)}")
    return removed
