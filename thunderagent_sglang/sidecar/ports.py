"""Host ports from a locked reservation table, held by environments until they are destroyed.

Never "bind port 0, close, hand out" (two callers can get the same port): a port is handed out
only from this table, under its lock, and a port some other process is listening on is skipped.
"""

from __future__ import annotations

import errno
import socket
import threading

from thunderagent_sglang.sidecar.errors import BadRequest, Conflict

DEFAULT_PORT_RANGE = (20000, 29999)


class PortTable:
    def __init__(self, low: int = DEFAULT_PORT_RANGE[0], high: int = DEFAULT_PORT_RANGE[1],
                 host: str = "127.0.0.1", probe: bool = True):
        if not 0 < low <= high < 65536:
            raise ValueError(f"port range {low}-{high} is invalid: use 1 <= LOW <= HIGH <= 65535")
        self.low, self.high, self.host, self.probe = low, high, host, probe
        self._lock = threading.Lock()
        self._owner: dict[int, str] = {}  # port -> env_id
        self._next = low

    def reserve(self, env_id: str, names: list[str]) -> dict[str, int]:
        """One port per name for ``env_id``, all or none."""
        if len(set(names)) != len(names):
            raise BadRequest(f"port names must be distinct, got {names}")
        with self._lock:
            got: dict[str, int] = {}
            try:
                for name in names:
                    got[name] = self._take(env_id)
            except Conflict:
                for port in got.values():
                    self._owner.pop(port, None)
                raise
            return got

    def restore(self, env_id: str, ports: dict[str, int]) -> dict[str, int]:
        """Gives ``env_id`` back the ports it had before a restart (those still free)."""
        with self._lock:
            kept = {name: port for name, port in ports.items() if port not in self._owner}
            for port in kept.values():
                self._owner[port] = env_id
            return kept

    def release(self, env_id: str) -> list[int]:
        with self._lock:
            ports = [p for p, owner in self._owner.items() if owner == env_id]
            for port in ports:
                del self._owner[port]
            return sorted(ports)

    def reserved(self) -> dict[int, str]:
        with self._lock:
            return dict(self._owner)

    def _take(self, env_id: str) -> int:
        size = self.high - self.low + 1
        for _ in range(size):
            port, self._next = self._next, self.low + (self._next - self.low + 1) % size
            if port not in self._owner and (not self.probe or _free(self.host, port)):
                self._owner[port] = env_id
                return port
        raise Conflict(
            f"no free port left in {self.low}-{self.high}: destroy environments or widen "
            "--port-range"
        )


def _free(host: str, port: int) -> bool:
    """True unless something listens on the port now (the table alone decides among ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True
