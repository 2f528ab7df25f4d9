"""The launcher's sidecar (``--thunderagent-sidecar``): started before the server, restarted
if it dies, stopped with the server.

The sidecar (``python -m thunderagent_sglang.sidecar``) listens on a free loopback port it
picks itself (``--port 0``) and writes its URL to ``ROOT/url``; ROOT is
``CACHE_DIR/sidecar/<server port>``, and every start sweeps what dead sidecars left in any root
under ``CACHE_DIR/sidecar`` (``--sweep-dir``). One token, from ``THUNDERAGENT_SIDECAR_TOKEN`` or
generated into ``ROOT/token`` (0600), reaches the sidecar and the server processes through that
variable. The child gets ``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of the launcher stops
it (cleanly, by SIGTERM).

A sidecar that exits while the server runs is started again on the same port (so the server's
event sender finds it), after 1, 2, 4... up to ``MAX_BACKOFF_S`` seconds; after
``MAX_FAILED_STARTS`` failed starts in a row the launcher gives up and says so. Restarts are
counted in the server's ``/metrics`` (``metrics_text``).
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
MAX_BACKOFF_S = 30.0
MAX_FAILED_STARTS = 10
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


def sidecar_command(root: Path, server: str, options: list[str] = (), port: int = 0,
                    python: str = sys.executable) -> list[str]:
    return [python, "-m", "thunderagent_sglang.sidecar", "--host", "127.0.0.1", "--port",
            str(port), "--root", str(root), "--sweep-dir", str(root.parent),
            "--server-url", server, *options]


def sidecar_options(base_roots: tuple[str, ...] = (), allow_network: bool = False,
                    idle_ttl_s: float | None = None) -> list[str]:
    """The sidecar flags the launcher's own ``--thunderagent-sidecar-*`` flags stand for."""
    options = [arg for root in base_roots for arg in ("--base-root", root)]
    if allow_network:
        options.append("--allow-network")
    if idle_ttl_s is not None:
        options += ["--idle-ttl", f"{idle_ttl_s:g}"]
    return options


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
    spawn: object = None  # (port) -> Popen: starts it again (None: no restarts)
    restarts: int = 0
    failed_starts: int = 0
    up: bool = True

    def metrics_text(self) -> bytes:
        """The sidecar's series for the server's ``/metrics``."""
        return (
            "# HELP thunderagent_sidecar_restarts_total Sidecar restarts after it exited.\n"
            "# TYPE thunderagent_sidecar_restarts_total counter\n"
            f"thunderagent_sidecar_restarts_total {self.restarts}\n"
            "# HELP thunderagent_sidecar_failed_starts_total Restarts that did not come up.\n"
            "# TYPE thunderagent_sidecar_failed_starts_total counter\n"
            f"thunderagent_sidecar_failed_starts_total {self.failed_starts}\n"
            "# HELP thunderagent_sidecar_up Whether the server's sidecar answers.\n"
            "# TYPE thunderagent_sidecar_up gauge\n"
            f"thunderagent_sidecar_up {int(self.up and self.proc.poll() is None)}\n").encode()

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


def start(cache_dir: Path, sglang_argv: list[str], environ: dict[str, str] | None = None,
          options: list[str] = ()) -> SidecarProcess:
    """Starts the sidecar and waits until it answers; SidecarStartError otherwise."""
    environ = dict(os.environ if environ is None else environ)
    root = sidecar_root(cache_dir, sglang_argv)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, token_file = _token(root, environ)
    log_path = root / "sidecar.log"
    launcher = os.getpid()

    def spawn(port: int) -> subprocess.Popen:
        (root / "url").unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                sidecar_command(root, server_url(sglang_argv), list(options), port),
                env=sidecar_env(environ, token, sglang_argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(launcher))

    proc = spawn(0)
    try:
        url = _wait_ready(proc, root, token, log_path)
    except BaseException:
        SidecarProcess(proc, "", token, token_file, log_path).stop()
        raise
    sidecar = SidecarProcess(proc, url, token, token_file, log_path, spawn=spawn)
    # The watcher starts any restarted child itself and lives as long as that child: the
    # parent-death signal follows the thread that forked it.
    threading.Thread(target=_watch, args=(sidecar, root), name="thunderagent-sidecar-watch",
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


def _watch(sidecar: SidecarProcess, root: Path) -> None:
    while True:
        code = sidecar.proc.wait()
        sidecar.up = False
        if sidecar.stopping:
            return
        if code in (-signal.SIGTERM, -signal.SIGINT):  # a signal to the whole process group
            get_logger().info("ThunderAgent sidecar stopped")
            return
        get_logger().error("ThunderAgent sidecar exited with code %s while the server runs; "
                           "starting it again (its log: %s)", code, sidecar.log_path)
        if not _restart(sidecar, root):
            return


def _restart(sidecar: SidecarProcess, root: Path) -> bool:
    """Starts the sidecar again on its port, with backoff; False when it gives up or stops."""
    port = int(sidecar.url.rsplit(":", 1)[1])
    for attempt in range(MAX_FAILED_STARTS):
        time.sleep(min(2.0 ** attempt, MAX_BACKOFF_S))
        if sidecar.stopping:
            return False
        proc = sidecar.spawn(port)
        sidecar.proc = proc  # stop() reaches this one from now on
        try:
            _wait_ready(proc, root, sidecar.token, sidecar.log_path)
        except SidecarStartError as exc:
            sidecar.failed_starts += 1
            get_logger().error("ThunderAgent sidecar restart %d failed: %s", attempt + 1, exc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            continue
        if sidecar.stopping:  # stop() ran meanwhile and saw the old one
            sidecar.stop()
            return False
        sidecar.restarts += 1
        sidecar.up = True
        get_logger().warning("ThunderAgent sidecar restarted on %s (restart %d)", sidecar.url,
                             sidecar.restarts)
        return True
    get_logger().error("ThunderAgent sidecar did not come back after %d starts: tool "
                       "environments are unavailable until the server restarts; see %s",
                       MAX_FAILED_STARTS, sidecar.log_path)
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
