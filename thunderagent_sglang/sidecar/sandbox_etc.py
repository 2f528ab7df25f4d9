"""The ``/etc`` a sandboxed command sees in host mode: generated, with no secrets.

Written once per sidecar start into ``ROOT/etc`` and bound read-only into every jail. It holds
its own passwd/group (root, the sandbox user, nobody), hosts and hostname, and copies of the
host's harmless files that tools need to run (the dynamic linker's cache, ``alternatives``
links, CA certificates, time zone, resolver settings). Never shadow, sudoers, ssh keys or
anything else of the host's.
"""

from __future__ import annotations

import os
import shutil

# Host /etc entries copied as they are (files, directories of links, or links).
COPIED = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl/certs",
          "ca-certificates.conf", "localtime", "timezone", "os-release", "debian_version",
          "lsb-release", "nsswitch.conf", "protocols", "services", "mime.types", "resolv.conf",
          "host.conf", "gai.conf", "profile", "bash.bashrc", "inputrc", "environment",
          "magic", "mailcap")
SANDBOX_USER = "sandbox"


def generate(target: str, sandbox_id: int, host_etc: str = "/etc") -> str:
    """Writes a fresh ``/etc`` tree into ``target`` (replacing one from an earlier start)."""
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target, mode=0o755)
    for name in COPIED:
        _copy(os.path.join(host_etc, name), os.path.join(target, name))
    files = {
        "passwd": (f"root:x:0:0:root:/root:/bin/sh\n"
                   f"{SANDBOX_USER}:x:{sandbox_id}:{sandbox_id}:sandbox:/tmp:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "group": f"root:x:0:\n{SANDBOX_USER}:x:{sandbox_id}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": "sandbox\n",
    }
    for name, text in files.items():
        with open(os.path.join(target, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(target, name), 0o644)
    return target


def _copy(source: str, dest: str) -> None:
    if not os.path.lexists(source):
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.islink(source) and _visible(os.path.realpath(source)):
        os.symlink(os.readlink(source), dest)
    elif os.path.isdir(source):
        shutil.copytree(source, dest, symlinks=True)
    elif os.path.isfile(source):
        shutil.copy2(source, dest)  # a link out of sight (e.g. into /run): its contents


def _visible(path: str) -> bool:
    """Whether a link's target is inside what a jail shows (``/usr`` or this ``/etc``)."""
    return path.startswith(("/usr/", "/etc/"))
