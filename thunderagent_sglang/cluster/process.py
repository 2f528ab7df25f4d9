"""A server or router process started by a fleet actor: its own process group, killed with
the actor (the kernel's parent-death signal), its output appended to a log file on its node;
ports picked on the node, and waiting until it answers."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    def setup() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return setup


class Child:
    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.command = command
        with open(log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                      f"{' '.join(command[:4])} ...\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to its whole process group, SIGKILL after ``grace_s``."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # what it left in its group goes too
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, preferred: int, wait_s: float = 15.0) -> int:
    """``preferred`` once it is free (a restarted replica keeps its URL when it can: the old
    server may still be dying), else any free port."""
    deadline = time.monotonic() + wait_s
    while True:
        if port_free(host, preferred):
            return preferred
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_answering(child: Child, url: str, timeout_s: float, headers: dict | None = None,
                   any_status: bool = False) -> float:
    """Seconds until ``url`` answers 200 (or anything, with ``any_status``); RuntimeError with
    the log's tail when the process exits or time runs out."""
    start = time.monotonic()
    while True:
        code = child.exited()
        if code is not None:
            raise RuntimeError(f"{child.command[2]} exited with status {code} while starting; "
                               f"the end of {child.log_path}:\n{child.log_tail()}")
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if any_status or response.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > timeout_s:
            child.stop()
            raise RuntimeError(f"{child.command[2]} did not answer {url} in {timeout_s:g} s; "
                               f"the end of {child.log_path}:\n{child.log_tail()}")
        time.sleep(1.0)
