"""Running a jailed command: bounded output, a timeout that kills its whole tree, orphan kills.

Output is read as it comes and only the first ``limit`` bytes of each stream are kept (the rest
is counted), so a command printing without end cannot fill the sidecar's memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Finished:
    returncode: int  # as a shell reports it: 128+N after signal N
    stdout: str
    stderr: str
    timed_out: bool


class _Reader(threading.Thread):
    """Drains one pipe, keeping its first ``limit`` bytes and counting all of them."""

    def __init__(self, stream, limit: int):
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.kept, self.total = bytearray(), 0

    def run(self) -> None:
        while chunk := self.stream.read1(_CHUNK):
            self.total += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", errors="replace")
        cut = self.total - len(self.kept)
        return text + f"\n[... {cut} more bytes cut]" if cut > 0 else text


def run(argv: list[str], env: dict[str, str], timeout: float, limit: int,
        started: Callable[[subprocess.Popen], None]) -> Finished:
    """Runs ``argv`` in its own session; ``started(proc)`` registers it for other killers."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    readers = [_Reader(proc.stdout, limit), _Reader(proc.stderr, limit)]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        started(proc)
        proc.wait(timeout)
    except BaseException as exc:
        timed_out = isinstance(exc, subprocess.TimeoutExpired)
        kill_tree(proc)
        proc.wait()
        if not timed_out:
            raise
    for reader in readers:
        reader.join(10)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return Finished(code, readers[0].text(), readers[1].text(), timed_out)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command's session; ``unshare --kill-child`` and its pid namespace end the
    rest."""
    if proc.returncode is not None:
        return  # reaped: its pid (and group id) may belong to another process by now
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_marked(marker: str) -> list[int]:
    """SIGKILLs every process whose command line contains ``marker``; waits until they are gone."""
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
