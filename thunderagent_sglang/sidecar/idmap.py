"""Idmapped clones of workspace layers: the sandbox user owns what root owns on disk.

A command runs as the unprivileged sandbox uid, yet a base tree prepared by root must be
editable in its workspace. Each overlay layer (base, snapshot layers, the upper store) is
mounted through an idmapped clone whose mapping swaps uid/gid 0 and the sandbox id: a file
root owns on disk is the sandbox user's in the workspace, and what the sandbox user writes is
stored as root's. Nothing of the base changes (overlayfs copies up). Linux 5.19 or later
(``open_tree``, ``mount_setattr``, ``move_mount``); the syscall numbers are the same on every
architecture since 5.2.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time

from thunderagent_sglang.sidecar.errors import BackendUnavailable, Unenforceable

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_IDMAP = 0x00100000

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def swap_map(sandbox_id: int) -> str:
    """The uid_map/gid_map text: root and the sandbox id trade places."""
    return f"0 {sandbox_id} 1\n{sandbox_id} 0 1\n"


def make_userns(sandbox_id: int) -> int:
    """A descriptor of a user namespace carrying ``swap_map`` (kept open by the backend)."""
    holder = subprocess.Popen(["unshare", "--user", "sleep", "30"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/user") == own:
            if holder.poll() is not None or time.monotonic() > deadline:
                raise BackendUnavailable("cannot create a user namespace for idmapped mounts: "
                                         f"{holder.stderr.read().decode().strip()}")
            time.sleep(0.002)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(swap_map(sandbox_id))
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendUnavailable(f"cannot set up the idmapping of the sandbox user: {exc}") from None
    finally:
        holder.kill()
        holder.wait()


def clone(source: str, target: str, userns_fd: int) -> None:
    """Mounts an idmapped clone of the mount tree at ``source`` on ``target``."""
    fd = _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                       _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)
    if fd < 0:
        _fail("cloning", source)
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        if _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.sizeof(attr)) != 0:
            _fail("idmapping", source)
        if _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(target),
                         _MOVE_MOUNT_F_EMPTY_PATH) != 0:
            _fail("mounting the idmapped clone of", source)
    finally:
        os.close(fd)


def check(directory: str, target: str, userns_fd: int) -> None:
    """BackendUnavailable unless an idmapped clone of ``directory`` can be mounted (on the empty
    directory ``target``, unmounted at once)."""
    try:
        clone(directory, target, userns_fd)
    except Unenforceable as exc:
        raise BackendUnavailable(f"the local backend needs idmapped mounts (Linux 5.19+) on "
                                 f"{directory}'s filesystem: {exc}") from None
    subprocess.run(["umount", target], check=True, capture_output=True)


def _fail(what: str, path: str) -> None:
    """422: the sandbox cannot be built over this directory (the request can pick another)."""
    err = ctypes.get_errno()
    hint = (" (its filesystem does not support idmapped mounts: put bases on ext4, xfs, btrfs "
            "or tmpfs)" if err == 22 else "")
    raise Unenforceable(f"{what} {path} failed: {os.strerror(err)}{hint}")
