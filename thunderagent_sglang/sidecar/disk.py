"""Mounts and bytes: per-environment disk caps on loop-mounted ext4 images, accounting, cleanup.

Why ext4-on-loop for the cap: the kernel here has no project quotas, and a tmpfs cap would hold
workspaces in RAM. A sparse image file grows only as the environment writes, writes stop with
ENOSPC at the image size, and unmounting it (pause) keeps the data on disk.
"""

from __future__ import annotations

import os
import subprocess

from thunderagent_sglang.sidecar.errors import SidecarError

MIN_CAP = 8 << 20  # ext4 needs a few MiB of its own


def run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SidecarError(f"{what} failed ({' '.join(cmd[:2])}...): {proc.stderr.strip()}")


def make_image(image: str, size: int) -> None:
    """A sparse ext4 image of ``size`` bytes (no journal, no reserved blocks)."""
    with open(image, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
         "-E", "lazy_itable_init=1,nodiscard", image], "making the disk-cap image")


def mount_image(image: str, target: str) -> None:
    run(["mount", "-o", "loop", image, target], "mounting the disk-cap image")


def mount_overlay(lowers: list[str], upper: str, work: str, target: str) -> None:
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, target], "mounting the workspace")


def umount(target: str, stacked_limit: int = 8) -> None:
    """Unmounts ``target`` (every mount stacked on it) if mounted; lazily if busy (a loop image
    then detaches when free)."""
    for _ in range(stacked_limit):
        if not is_mounted(target):
            return
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            run(["umount", "-l", target], f"unmounting {target}")
    raise SidecarError(f"{target} is still mounted after {stacked_limit} unmounts: unmount it "
                       "by hand (umount -R)")


def is_mounted(target: str) -> bool:
    return os.path.realpath(target) in mounts_under(os.path.realpath(target))


def mounts_under(root: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below ``root``, deepest first (from ``mountinfo``: this process's
    mount namespace unless another process's file is given)."""
    root = root.rstrip("/") or "/"
    found = []
    with open(mountinfo) as f:
        for line in f:
            point = unescape(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_all_under(root: str) -> list[str]:
    points = mounts_under(root)
    for point in points:
        umount(point)
    return points


def loop_devices_under(root: str) -> list[str]:
    """Loop devices whose backing file lies under ``root`` (from /sys/block)."""
    found = []
    prefix = os.path.realpath(root).rstrip("/") + "/"
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.startswith(prefix):
            found.append(f"/dev/{name}")
    return found


def used_bytes(path: str) -> int:
    """Bytes of disk blocks under ``path`` (like ``du``), each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def file_blocks(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def is_full(path: str, slack: int = 1 << 20) -> bool:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < slack


def unescape(field: str) -> str:
    """A path field of /proc/self/mountinfo, with its octal escapes undone."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\")
