"""Scheduler process: program events to the tool-environment sidecar, off the scheduler loop,
retried until the sidecar acknowledges them.

``EventSender.submit(program_id, event)`` puts ``{"program_id", "event"}`` on a bounded queue;
one daemon thread POSTs each, in order, to ``{sidecar_url}/events`` with the sidecar's bearer
token (``THUNDERAGENT_SIDECAR_TOKEN``). An event is done when the sidecar answers 2xx
(acknowledged) or refuses it for good (a 4xx other than 408/429: a wrong token, say; logged).
A connection error, a timeout, 408, 429 or 5xx (a sidecar restarting) is retried, with backoff
up to ``MAX_BACKOFF_S``, until acknowledged; the events behind it wait, so order is kept. When
the queue is full the new event is dropped and counted: the sidecar reconciles with
``GET /programs`` after a restart, and its idle TTL is the last backstop. Nothing here blocks
the caller or raises into it. ``stats()`` feeds ``/metrics``.
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
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
RETRIED_STATUSES = (408, 429)


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


class _Refused(Exception):
    """The sidecar refused the event for good (retrying cannot help)."""


class EventSender:
    """A bounded queue and one daemon thread POSTing program events to a sidecar."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = TIMEOUT_S,
                 max_queued: int = MAX_QUEUED, warning: RateLimitedWarning | None = None,
                 max_backoff_s: float = MAX_BACKOFF_S):
        self.events_url = url.rstrip("/") + "/events"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.warning = warning or RateLimitedWarning()
        self.acknowledged = 0
        self.refused = 0
        self.retries = 0
        self.dropped = 0
        self._closing = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="thunderagent-sidecar-events",
                                        daemon=True)
        self._thread.start()

    def submit(self, program_id: str, event: str) -> bool:
        """Queues one event; False (counted, and a warning) when the queue is full.

        ``event`` is one of ``EVENTS``; any other name is a programming error (ValueError)."""
        if event not in EVENTS:
            raise ValueError(f"unknown sidecar event {event!r}: use one of {', '.join(EVENTS)}")
        try:
            self._queue.put_nowait((program_id, event))
            return True
        except queue.Full:
            self.dropped += 1
            self.warning.warn("ThunderAgent: sidecar event %s of program %s dropped: %d events "
                              "wait (is the sidecar at %s answering?)", event, program_id,
                              self._queue.maxsize, self.events_url)
            return False

    def stats(self) -> dict:
        return {"acknowledged": self.acknowledged, "refused": self.refused,
                "retries": self.retries, "dropped": self.dropped,
                "queued": self._queue.unfinished_tasks}

    def flush(self, timeout_s: float) -> bool:
        """Waits until every queued event is acknowledged or refused; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (within ``timeout_s``), then stops the thread."""
        self.flush(timeout_s)
        self._closing.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout_s)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, headers=self.headers) as client:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    self._deliver(client, *item)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, program_id: str, event: str) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._closing.is_set():
            try:
                self._post(client, program_id, event)
                self.acknowledged += 1
                return
            except _Refused as exc:
                self.refused += 1
                self.warning.warn("ThunderAgent: the sidecar at %s refused event %s of program "
                                  "%s: %s (check %s)", self.events_url, event, program_id, exc,
                                  TOKEN_ENV)
                return
            except Exception as exc:  # noqa: BLE001 - retried: the sidecar may be restarting
                self.retries += 1
                self.warning.warn("ThunderAgent: sidecar event %s of program %s not delivered "
                                  "to %s yet: %s; retrying", event, program_id,
                                  self.events_url, exc)
            self._closing.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _post(self, client: httpx.Client, program_id: str, event: str) -> None:
        reply = client.post(self.events_url, json={"program_id": program_id, "event": event})
        status = reply.status_code
        if 400 <= status < 500 and status not in RETRIED_STATUSES:
            raise _Refused(f"HTTP {status}: {reply.text[:200]}")
        if status >= 300:
            raise RuntimeError(f"HTTP {status}: {reply.text[:200]}")


def make_sender(cfg: config.ThunderAgentConfig,
                environ: dict[str, str] | None = None) -> EventSender | None:
    """The scheduler process's sender when ``cfg.sidecar_url`` is set, else None."""
    if not cfg.sidecar_url:
        return None
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if not token:
        get_logger().warning("ThunderAgent: %s is not set: events to the sidecar at %s will be "
                             "refused (set it to the sidecar's token)", TOKEN_ENV, cfg.sidecar_url)
    return EventSender(cfg.sidecar_url, token or None)
