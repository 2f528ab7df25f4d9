"""The command line that runs a command in fresh mount/pid/uts/ipc namespaces (network optional).

``host`` mode: a tmpfs root holding read-only binds of the host's top-level directories, the
workspace at /workspace. ``rootfs`` mode: the workspace *is* a prepared root filesystem. Mounts
made inside vanish with the namespace, so a crash leaks none of them. The jail script stays the
namespace's pid 1 (the command is pid 2); ``--kill-child`` and the pid namespace make one SIGKILL
of ``unshare`` end every process the command started.
"""

from __future__ import annotations

MARK = "thunderagent-sidecar-jail"  # $0 of the jail script: the orphan sweep finds it by this

_SCRIPT = r"""
set -e
mode="$1"; ws="$2"; R="$3"; cwd="$4"; shift 4
mount --make-rprivate /
if [ "$mode" = host ]; then
  mount -t tmpfs -o mode=755 jailroot "$R"
  for p in /*; do
    n="${p#/}"
    case "$n" in proc|dev|sys|tmp|run|workspace) continue;; esac
    if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$R/$n"; continue; fi
    [ -d "$p" ] || continue
    mkdir "$R/$n"; mount --rbind "$p" "$R/$n"; mount -o remount,bind,ro "$R/$n"
  done
  mkdir "$R/workspace" "$R/proc" "$R/dev" "$R/tmp" "$R/sys" "$R/run"
  mount --bind "$ws" "$R/workspace"
else
  mount --rbind "$ws" "$R"
  mkdir -p "$R/proc" "$R/dev" "$R/tmp"
fi
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/tmp"
# Not exec: this shell stays pid 1, so a command killed by a signal (OOM, kill -9) exits 128+N
# through it (unshare 2.38 reports a pid 1 killed by a signal as exit 1).
chroot "$R" /bin/sh -c 'cd "$1" || exit 126; shift; exec env -i "$@"' jail "$cwd" "$@"
"""


def command(mode: str, workspace: str, jail_root: str, cwd: str, env: dict[str, str],
            cmd: str, network: bool, tag: str) -> list[str]:
    """argv for ``subprocess``: ``sh -c CMD`` with exactly ``env``, in ``cwd`` inside the jail."""
    flags = ["--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child"]
    if not network:
        flags.append("--net")
    assignments = [f"{k}={v}" for k, v in env.items()]
    return ["unshare", *flags, "--", "/bin/sh", "-c", _SCRIPT, f"{MARK}:{tag}",
            mode, workspace, jail_root, cwd, *assignments, "/bin/sh", "-c", cmd]
