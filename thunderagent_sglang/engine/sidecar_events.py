"""Scheduler process: program events to the tool-environment sidecar, off the scheduler loop.

``notify(program_id, event)`` puts ``{"program_id", "event"}`` on a bounded queue; one daemon
thread POSTs each, in order, to ``{sidecar_url}/events`` with the sidecar's bearer token
(``THUNDERAGENT_SIDECAR_TOKEN``). A failed or dropped event is logged (at most once per
``LOG_EVERY_S``) and never raised: the sidecar's own TTLs are the backstop. Without
``install(cfg)`` and a ``cfg.sidecar_url``, ``notify`` does nothing.

``notify`` returns a ticket; ``settled(ticket)`` says, without blocking, whether that event's
POST has finished (answered or failed), so the scheduler loop can hold a call until its
``prepare`` reached the sidecar (with a bound of its own).
"""

from __future__ import annotations

import os
import queue
import threading
import time

import httpx

from thunderagent_sglang import config
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.program.events import EVENTS
from thunderagent_sglang.sidecar.settings import TOKEN_ENV

TIMEOUT_S = 2.0
MAX_QUEUED = 4096
LOG_EVERY_S = 30.0

_state: dict = {"sender": None}


class RateLimitedWarning:
    """Logs a warning at most once per ``every_s``, counting the ones left out."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock=time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._last = None
        self.suppressed = 0

    def warn(self, message: str, *args) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += f" ({self.suppressed} more such problems since the last report)"
        self._last, self.suppressed = now, 0
        get_logger().warning(message, *args)
        return True


class EventSender:
    """A bounded queue and one daemon thread POSTing program events to a sidecar."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = TIMEOUT_S,
                 max_queued: int = MAX_QUEUED, warning: RateLimitedWarning | None = None):
        self.events_url = url.rstrip("/") + "/events"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.warning = warning or RateLimitedWarning()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_ticket = 0  # tickets are given in queue order, and settled in that order
        self.last_settled = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="thunderagent-sidecar-events",
                                        daemon=True)
        self._thread.start()

    def submit(self, program_id: str, event: str) -> int:
        """Queues one event: its ticket, or 0 (and a warning) when the queue is full.

        Call from one thread (the scheduler's): tickets follow queue order.
        """
        try:
            self._queue.put_nowait((self.last_ticket + 1, program_id, event))
        except queue.Full:
            self.dropped += 1
            self.warning.warn("ThunderAgent: sidecar event %s of program %s dropped: %d events "
                              "are queued (is the sidecar at %s answering?)", event, program_id,
                              self._queue.maxsize, self.events_url)
            return 0
        self.last_ticket += 1
        return self.last_ticket

    def settled(self, ticket: int) -> bool:
        return ticket <= self.last_settled

    def flush(self, timeout_s: float) -> bool:
        """Waits until every queued event is sent or has failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (within ``timeout_s``), then stops the thread."""
        self.flush(timeout_s)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, headers=self.headers) as client:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    ticket, program_id, event = item
                    self._post(client, program_id, event)
                    self.last_settled = ticket
                finally:
                    self._queue.task_done()

    def _post(self, client: httpx.Client, program_id: str, event: str) -> None:
        try:
            reply = client.post(self.events_url, json={"program_id": program_id, "event": event})
            if reply.status_code >= 400:
                raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - a lost event is logged, never raised
            self.failed += 1
            self.warning.warn("ThunderAgent: sidecar event %s of program %s not delivered to %s: "
                              "%s (check --thunderagent-sidecar-url and %s)", event, program_id,
                              self.events_url, exc, TOKEN_ENV)


def install(cfg: config.ThunderAgentConfig, environ: dict[str, str] | None = None):
    """Starts the sender when ``cfg.sidecar_url`` is set; idempotent; otherwise a no-op.
    Returns ``notify``, the function the runtime is handed."""
    if not cfg.sidecar_url or _state["sender"] is not None:
        return notify
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if not token:
        get_logger().warning("ThunderAgent: %s is not set: events to the sidecar at %s will be "
                             "refused (set it to the sidecar's token)", TOKEN_ENV, cfg.sidecar_url)
    _state["sender"] = EventSender(cfg.sidecar_url, token or None)
    return notify


def notify(program_id: str, event: str) -> int:
    """Tells the sidecar about a program, without blocking; a no-op when not installed.

    ``event`` is one of ``EVENTS``; any other name is a programming error (ValueError).
    Returns a ticket for ``settled``: 0 when nothing was queued (not installed, queue full).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown sidecar event {event!r}: use one of {', '.join(EVENTS)}")
    sender = _state["sender"]
    return sender.submit(program_id, event) if sender is not None else 0


def settled(ticket: int) -> bool:
    """Whether the event of ``ticket`` was delivered or has failed (True for 0, or when not
    installed): never blocks."""
    sender = _state["sender"]
    return sender is None or sender.settled(ticket)


def sender() -> EventSender | None:
    """The running sender (for tests and stats), or None when not installed."""
    return _state["sender"]


def uninstall(timeout_s: float = 5.0) -> None:
    """Sends what is queued and stops the sender (tests; the process exit does it otherwise)."""
    current, _state["sender"] = _state["sender"], None
    if current is not None:
        current.close(timeout_s)
