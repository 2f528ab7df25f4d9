"""The command line that runs a command in its sandbox: fresh mount/pid/uts/ipc/net namespaces,
an allow-listed root, and no privileges.

``host`` mode: a read-only tmpfs root holding read-only binds of the host's ``/usr``, ``/bin``,
``/sbin`` and ``/lib*`` only, the generated ``/etc`` (``sandbox_etc``), the workspace at
``/workspace``. ``rootfs`` mode: the workspace *is* a prepared root filesystem. In both, ``/dev``
holds null, zero, full, random, urandom and tty (plus the ``fd`` links and a ``shm`` tmpfs),
``/proc`` is the sandbox's own, ``/tmp`` a fresh tmpfs, and every mount is nosuid and nodev.

The command runs as the sandbox uid (no capabilities, no supplementary groups) unless the
operator allowed root for the environment; then it is uid 0 with a small capability set (no
``sys_admin``, ``sys_chroot``, ``mknod``, ``sys_module``...). ``no_new_privs`` is set on the whole
tree. Without the network it has a namespace of its own with loopback up.

Lifetime: ``setpriv --pdeathsig KILL`` kills ``unshare`` when the sidecar dies (even by
``kill -9``); ``unshare --kill-child`` then kills the jail script, which stays the pid
namespace's pid 1 (the command is pid 2), and with it every process the command started.
Mounts made inside vanish with the mount namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

MARK = "thunderagent-sidecar-jail"  # $0 of the jail script: the orphan sweep finds it by this
HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
ROOT_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid",
             "net_bind_service")

_SCRIPT = r"""
set -e
mode="$1"; ws="$2"; R="$3"; cwd="$4"; etc="$5"; uid="$6"; net="$7"; caps="$8"; shift 8
mount --make-rprivate /
if [ "$mode" = host ]; then
  mount -t tmpfs -o mode=755,nosuid,nodev jailroot "$R"
  for n in __HOST_DIRS__; do
    p="/$n"
    if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$R/$n"; continue; fi
    [ -d "$p" ] || continue
    mkdir "$R/$n"; mount --bind -o ro,nosuid,nodev "$p" "$R/$n"
  done
  mkdir "$R/etc" "$R/workspace" "$R/proc" "$R/dev" "$R/tmp"
  mount --bind -o ro,nosuid,nodev "$etc" "$R/etc"
  mount --bind -o nosuid,nodev "$ws" "$R/workspace"
  mount -o remount,ro,nosuid,nodev "$R"
else
  mount --bind -o nosuid,nodev "$ws" "$R"
  mkdir -p "$R/proc" "$R/dev" "$R/tmp"
fi
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
if [ "$uid" = 0 ]; then
  for p in sys sysrq-trigger irq bus; do
    if [ -e "$R/proc/$p" ]; then mount --bind -o ro "$R/proc/$p" "$R/proc/$p"; fi
  done
fi
mount -t tmpfs -o mode=755,nosuid,nodev,noexec,size=64k jaildev "$R/dev"
for d in __DEVICES__; do : > "$R/dev/$d"; mount --bind -o nosuid,noexec "/dev/$d" "$R/dev/$d"; done
ln -s /proc/self/fd "$R/dev/fd"; ln -s fd/0 "$R/dev/stdin"; ln -s fd/1 "$R/dev/stdout"; ln -s fd/2 "$R/dev/stderr"
mkdir "$R/dev/shm"; mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
mount -o remount,ro,nosuid,nodev,noexec "$R/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
echo sandbox > /proc/sys/kernel/hostname  # this uts namespace's own
if [ "$net" = off ]; then ip link set lo up; fi
# Not exec: this shell stays pid 1, so a command killed by a signal (OOM, kill -9) exits 128+N
# through it (unshare 2.38 reports a pid 1 killed by a signal as exit 1).
if [ "$uid" = 0 ]; then
  unshare --root="$R" -- /bin/sh -c 'cd "$1" || exit 126; c="$2"; shift 2; exec setpriv --bounding-set=-all,"$c" --inh-caps=-all -- env -i "$@"' jail "$cwd" "$caps" "$@"
else
  unshare --root="$R" --setgid="$uid" --setuid="$uid" -- /bin/sh -c 'cd "$1" || exit 126; shift; exec env -i "$@"' jail "$cwd" "$@"
fi
""".replace("__HOST_DIRS__", " ".join(HOST_DIRS)).replace("__DEVICES__", " ".join(DEVICES))


@dataclass(frozen=True)
class Jail:
    mode: str  # "host" (base_dir) or "rootfs" (image: a root filesystem directory)
    workspace: str  # the environment's merged overlay
    root: str  # the empty directory each command's namespace mounts its root on
    etc: str  # the generated /etc (host mode)
    uid: int  # the command's uid and gid; 0 only where the operator allowed root
    network: bool
    tag: str  # "ROOT:ENV": the sweep's marker


def command(jail: Jail, cwd: str, env: dict[str, str], cmd: str) -> list[str]:
    """argv for ``subprocess``: ``sh -c CMD`` with exactly ``env``, in ``cwd`` inside the jail."""
    flags = ["--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child"]
    if not jail.network:
        flags.append("--net")
    caps = ",".join(f"+{c}" for c in ROOT_CAPS)
    assignments = [f"{k}={v}" for k, v in env.items()]
    return ["setpriv", "--pdeathsig", "KILL", "--no-new-privs", "unshare", *flags, "--",
            "/bin/sh", "-c", _SCRIPT, f"{MARK}:{jail.tag}", jail.mode, jail.workspace, jail.root,
            cwd, jail.etc, str(jail.uid), "on" if jail.network else "off", caps,
            *assignments, "/bin/sh", "-c", cmd]
