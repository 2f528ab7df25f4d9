"""The launcher's sidecar (``--thunderagent-sidecar``): started before the server, stopped with it.

The sidecar (``python -m thunderagent_sglang.sidecar``) listens on a free loopback port it
picks itself (``--port 0``) and writes its URL to ``ROOT/url``; ROOT is
``CACHE_DIR/sidecar/<server port>``, so a restarted server's sidecar sweeps what a crashed one
left. One token, from ``THUNDERAGENT_SIDECAR_TOKEN`` or generated into ``ROOT/token`` (0600),
reaches the sidecar and the server processes through that variable. The child gets
``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of the launcher stops it (cleanly, by SIGTERM).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.launch_args import flag_value, has_flag
from thunderagent_sglang.sidecar.settings import SERVER_KEY_ENV, TOKEN_ENV

SGLANG_DEFAULT_HOST = "127.0.0.1"  # sglang's --host default
SGLANG_DEFAULT_PORT = "30000"  # sglang's --port default
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "": "127.0.0.1"}


class SidecarStartError(RuntimeError):
    """The sidecar did not come up; the message says why and where its log is."""


# -- pure: from the server's command line to the sidecar's -----------------------------------
def server_url(sglang_argv: list[str]) -> str:
    """Where the sidecar reaches the server: its --host (a wildcard means loopback) and --port."""
    host = flag_value(sglang_argv, "--host") or SGLANG_DEFAULT_HOST
    host = _WILDCARD.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = flag_value(sglang_argv, "--port") or SGLANG_DEFAULT_PORT
    scheme = "https" if has_flag(sglang_argv, "--ssl-certfile") else "http"
    return f"{scheme}://{host}:{port}"


def sidecar_root(cache_dir: Path, sglang_argv: list[str]) -> Path:
    return cache_dir / "sidecar" / (flag_value(sglang_argv, "--port") or SGLANG_DEFAULT_PORT)


def sidecar_command(root: Path, server: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "thunderagent_sglang.sidecar", "--host", "127.0.0.1", "--port", "0",
            "--root", str(root), "--server-url", server]


def sidecar_env(environ: dict[str, str], token: str, sglang_argv: list[str]) -> dict[str, str]:
    """The sidecar's environment: the token, and the server's --api-key for its reports."""
    env = {**environ, TOKEN_ENV: token}
    api_key = flag_value(sglang_argv, "--api-key")
    if api_key:
        env[SERVER_KEY_ENV] = api_key
    return env


# -- the child process -----------------------------------------------------------------------
@dataclasses.dataclass
class SidecarProcess:
    proc: subprocess.Popen
    url: str
    token: str
    token_file: Path | None  # None: the token came from THUNDERAGENT_SIDECAR_TOKEN
    log_path: Path
    stopping: bool = False

    def describe(self) -> str:
        where = f"token in {self.token_file}" if self.token_file else f"token from {TOKEN_ENV}"
        return f"ThunderAgent sidecar: {self.url} ({where}, log in {self.log_path})"

    def stop(self) -> None:
        """SIGTERM (the sidecar destroys its environments), then SIGKILL after a grace period."""
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                get_logger().error("ThunderAgent sidecar did not stop in %.0f s; killed (see %s)",
                                   STOP_TIMEOUT_S, self.log_path)
                self.proc.kill()
                self.proc.wait()


def start(cache_dir: Path, sglang_argv: list[str],
          environ: dict[str, str] | None = None) -> SidecarProcess:
    """Starts the sidecar and waits until it answers; SidecarStartError otherwise."""
    environ = dict(os.environ if environ is None else environ)
    root = sidecar_root(cache_dir, sglang_argv)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, token_file = _token(root, environ)
    (root / "url").unlink(missing_ok=True)
    log_path = root / "sidecar.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            sidecar_command(root, server_url(sglang_argv)),
            env=sidecar_env(environ, token, sglang_argv),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(os.getpid()))
    try:
        url = _wait_ready(proc, root, token, log_path)
    except BaseException:
        SidecarProcess(proc, "", token, token_file, log_path).stop()
        raise
    sidecar = SidecarProcess(proc, url, token, token_file, log_path)
    threading.Thread(target=_watch, args=(sidecar,), name="thunderagent-sidecar-watch",
                     daemon=True).start()
    return sidecar


def _token(root: Path, environ: dict[str, str]) -> tuple[str, Path | None]:
    given = environ.get(TOKEN_ENV, "").strip()
    if given:
        return given, None
    token = secrets.token_urlsafe(32)
    path = root / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token, path


def _die_with_parent(parent_pid: int):
    """A preexec_fn: SIGTERM the child when the launcher dies, even by SIGKILL (Linux)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _wait_ready(proc: subprocess.Popen, root: Path, token: str, log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    url_file = root / "url"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SidecarStartError(f"the sidecar exited with code {proc.returncode}:\n"
                                    f"{_tail(log_path)}")
        if url_file.exists() and _answers(url_file.read_text().strip(), token):
            return url_file.read_text().strip()
        time.sleep(0.1)
    raise SidecarStartError(f"the sidecar did not answer in {START_TIMEOUT_S:.0f} s:\n"
                            f"{_tail(log_path)}")


def _answers(url: str, token: str) -> bool:
    if not url:
        return False
    try:
        reply = httpx.get(f"{url}/stats", headers={"Authorization": f"Bearer {token}"}, timeout=2)
        return reply.status_code == 200
    except httpx.HTTPError:
        return False


def _watch(sidecar: SidecarProcess) -> None:
    code = sidecar.proc.wait()
    if sidecar.stopping:
        return
    if code in (0, -signal.SIGTERM, -signal.SIGINT):  # a signal to the whole process group
        get_logger().info("ThunderAgent sidecar stopped")
    else:
        get_logger().error("ThunderAgent sidecar exited with code %s while the server runs: tool "
                           "environments are gone and program events are lost; see %s",
                           code, sidecar.log_path)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
