"""Program events to the sidecar: sent in order, with the token, retried until acknowledged,
never blocking or raising."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thunderagent_sglang import config
from thunderagent_sglang.engine import sidecar_events
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.sidecar_events import EventSender, RateLimitedWarning


class FakeSidecar:
    """A real HTTP server on loopback recording (path, authorization, body) of each POST."""

    def __init__(self, status: int = 200, delay_s: float = 0.0, port: int = 0,
                 fail_first: int = 0):
        self.received: list[tuple[str, str | None, dict]] = []
        self.status, self.delay_s, self.fail_first = status, delay_s, fail_first
        self.failed = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.delay_s)
                status = outer.status
                if outer.failed < outer.fail_first:  # a sidecar still starting up
                    outer.failed += 1
                    status = 503
                else:
                    outer.received.append((self.path, self.headers.get("Authorization"), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sidecar():
    fake = FakeSidecar()
    yield fake
    fake.close()


@pytest.fixture
def warnings():
    """Our logger's warnings, as formatted messages."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect(logging.WARNING)
    get_logger().addHandler(handler)
    yield lines
    get_logger().removeHandler(handler)


@pytest.fixture
def senders():
    made: list[EventSender] = []

    def make(*args, **kwargs) -> EventSender:
        made.append(EventSender(*args, **kwargs))
        return made[-1]

    yield make
    for sender in made:
        sender.close(timeout_s=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_no_sidecar_url_makes_no_sender():
    assert sidecar_events.make_sender(config.ThunderAgentConfig(), environ={}) is None


def test_unknown_event_is_a_value_error_naming_the_valid_ones(senders, sidecar):
    sender = senders(sidecar.url, "t")
    with pytest.raises(ValueError, match="'stopped': use one of terminated, paused, resumed, "
                                         "prepare"):
        sender.submit("p1", "stopped")


def test_events_reach_the_sidecar_in_order_with_the_token(sidecar, warnings):
    cfg = config.ThunderAgentConfig(sidecar_url=sidecar.url + "/")
    sender = sidecar_events.make_sender(cfg, environ={"THUNDERAGENT_SIDECAR_TOKEN": "tok-1"})
    try:
        for program_id, event in [("a", "paused"), ("a", "prepare"), ("a", "resumed"),
                                  ("b/x", "terminated")]:
            assert sender.submit(program_id, event) is True
        assert sender.flush(5.0)
    finally:
        sender.close()
    assert sidecar.received == [
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "paused"}),
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "prepare"}),
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "resumed"}),
        ("/events", "Bearer tok-1", {"program_id": "b/x", "event": "terminated"}),
    ]
    assert sender.stats() == {"acknowledged": 4, "refused": 0, "retries": 0, "dropped": 0,
                              "queued": 0}
    assert warnings == []


def test_missing_token_is_warned_and_sends_no_authorization_header(sidecar, warnings):
    sender = sidecar_events.make_sender(config.ThunderAgentConfig(sidecar_url=sidecar.url),
                                        environ={})
    try:
        assert warnings == [f"ThunderAgent: THUNDERAGENT_SIDECAR_TOKEN is not set: events to "
                            f"the sidecar at {sidecar.url} will be refused (set it to the "
                            "sidecar's token)"]
        sender.submit("p", "terminated")
        assert sender.flush(5.0)
    finally:
        sender.close()
    assert sidecar.received == [("/events", None, {"program_id": "p", "event": "terminated"})]


def test_submit_does_not_wait_for_a_slow_sidecar(senders):
    slow = FakeSidecar(delay_s=0.2)
    try:
        sender = senders(slow.url, "t")
        start = time.monotonic()
        assert [sender.submit("p", "paused") for _ in range(3)] == [True, True, True]
        assert time.monotonic() - start < 0.1
        assert sender.flush(10.0)
        assert len(slow.received) == 3
    finally:
        slow.close()


def test_refused_events_are_counted_warned_once_per_interval_and_not_retried(senders, warnings):
    refusing = FakeSidecar(status=401)
    try:
        warning = RateLimitedWarning(every_s=3600)
        sender = senders(refusing.url, "wrong", warning=warning)
        sender.submit("p", "paused")
        sender.submit("p", "resumed")
        assert sender.flush(5.0)
        assert len(refusing.received) == 2  # each sent once
        assert (sender.acknowledged, sender.refused, sender.retries) == (0, 2, 0)
        assert warning.suppressed == 1
        assert warnings == [
            f"ThunderAgent: the sidecar at {refusing.url}/events refused event paused of program "
            "p: HTTP 401: {} (check THUNDERAGENT_SIDECAR_TOKEN)"]
    finally:
        refusing.close()


def test_a_sidecar_answering_503_gets_the_event_again_in_order(senders):
    starting = FakeSidecar(fail_first=2)
    try:
        sender = senders(starting.url, "t")
        sender.submit("p", "paused")
        sender.submit("q", "terminated")
        assert sender.flush(5.0)
        assert [body for _, _, body in starting.received] == [
            {"program_id": "p", "event": "paused"}, {"program_id": "q", "event": "terminated"}]
        assert (sender.acknowledged, sender.retries, starting.failed) == (2, 2, 2)
    finally:
        starting.close()


def test_events_wait_for_a_sidecar_that_is_down_and_arrive_when_it_is_back(senders):
    port = free_port()  # nothing listens there yet: the sidecar is restarting
    sender = senders(f"http://127.0.0.1:{port}", "t", timeout_s=0.5, max_backoff_s=0.1)
    sender.submit("p", "terminated")
    sender.submit("q", "paused")
    wait_for(lambda: sender.retries >= 2)
    assert sender.stats()["queued"] == 2 and sender.acknowledged == 0
    back = FakeSidecar(port=port)
    try:
        assert sender.flush(5.0)
        assert [body for _, _, body in back.received] == [
            {"program_id": "p", "event": "terminated"}, {"program_id": "q", "event": "paused"}]
        assert sender.stats()["queued"] == 0 and sender.acknowledged == 2
    finally:
        back.close()


def test_close_stops_retrying_at_once(senders):
    sender = senders(f"http://127.0.0.1:{free_port()}", "t", timeout_s=0.5)
    sender.submit("p", "terminated")
    wait_for(lambda: sender.retries >= 1)
    start = time.monotonic()
    sender.close(timeout_s=0.5)
    assert time.monotonic() - start < 2.5
    assert sender.acknowledged == 0


def test_full_queue_drops_the_event_and_says_so(senders, warnings):
    slow = FakeSidecar(delay_s=0.3)
    try:
        sender = senders(slow.url, "t", max_queued=1, warning=RateLimitedWarning(every_s=3600))
        assert sender.submit("p", "paused") is True  # taken by the thread, in flight
        time.sleep(0.1)
        assert sender.submit("p", "resumed") is True  # queued
        assert sender.submit("p", "terminated") is False  # no room
        assert sender.dropped == 1
        assert warnings == [
            f"ThunderAgent: sidecar event terminated of program p dropped: 1 events wait "
            f"(is the sidecar at {slow.url}/events answering?)"]
        assert sender.flush(5.0)
        assert [body["event"] for _, _, body in slow.received] == ["paused", "resumed"]
    finally:
        slow.close()


def test_rate_limited_warning_reports_what_it_left_out(warnings):
    now = [100.0]
    warning = RateLimitedWarning(every_s=30, clock=lambda: now[0])
    assert warning.warn("lost %s", "a") is True
    now[0] = 110.0
    assert warning.warn("lost %s", "b") is False
    assert warning.warn("lost %s", "c") is False
    now[0] = 131.0
    assert warning.warn("lost %s", "d") is True
    assert warning.suppressed == 0
    assert warnings == ["lost a", "lost d (2 more such problems since the last report)"]
