"""Program events to the sidecar: sent in order, with the token, never blocking or raising."""

from __future__ import annotations

import json
import logging
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

    def __init__(self, status: int = 200, delay_s: float = 0.0):
        self.received: list[tuple[str, str | None, dict]] = []
        self.status, self.delay_s = status, delay_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.delay_s)
                outer.received.append((self.path, self.headers.get("Authorization"), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


@pytest.fixture(autouse=True)
def no_sender_left():
    sidecar_events.uninstall()
    yield
    sidecar_events.uninstall()


def test_notify_without_install_is_a_no_op_and_settled_at_once():
    assert sidecar_events.notify("p1", "terminated") == 0
    assert sidecar_events.sender() is None
    assert sidecar_events.settled(0) is True


def test_a_ticket_is_settled_once_its_post_is_answered():
    slow = FakeSidecar(delay_s=0.3)
    sidecar_events.install(config.ThunderAgentConfig(sidecar_url=slow.url),
                           environ={"THUNDERAGENT_SIDECAR_TOKEN": "t"})
    try:
        first = sidecar_events.notify("p", "prepare")
        second = sidecar_events.notify("p", "resumed")
        assert (first, second) == (1, 2)
        assert (sidecar_events.settled(first), sidecar_events.settled(second)) == (False, False)
        deadline = time.monotonic() + 5
        while not sidecar_events.settled(first) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [body["event"] for _, _, body in slow.received] == ["prepare"]
        assert sidecar_events.settled(second) is False
        assert sidecar_events.sender().flush(5.0)
        assert sidecar_events.settled(second) is True
    finally:
        sidecar_events.uninstall()
        slow.close()


def test_a_failed_post_settles_its_ticket_too():
    sender = EventSender("http://127.0.0.1:9", "t", timeout_s=0.5)
    try:
        ticket = sender.submit("p", "prepare")
        assert sender.flush(5.0)
        assert (sender.settled(ticket), sender.failed) == (True, 1)
    finally:
        sender.close()


def test_install_without_a_sidecar_url_starts_nothing():
    sidecar_events.install(config.ThunderAgentConfig(), environ={"THUNDERAGENT_SIDECAR_TOKEN": "t"})
    assert sidecar_events.sender() is None


def test_unknown_event_is_a_value_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="'stopped': use one of terminated, paused, resumed, "
                                         "prepare"):
        sidecar_events.notify("p1", "stopped")


def test_installed_events_reach_the_sidecar_in_order_with_the_token(sidecar, warnings):
    cfg = config.ThunderAgentConfig(sidecar_url=sidecar.url + "/")
    sidecar_events.install(cfg, environ={"THUNDERAGENT_SIDECAR_TOKEN": "tok-1"})
    for program_id, event in [("a", "paused"), ("a", "prepare"), ("a", "resumed"),
                              ("b/x", "terminated")]:
        sidecar_events.notify(program_id, event)
    assert sidecar_events.sender().flush(5.0)
    assert sidecar.received == [
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "paused"}),
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "prepare"}),
        ("/events", "Bearer tok-1", {"program_id": "a", "event": "resumed"}),
        ("/events", "Bearer tok-1", {"program_id": "b/x", "event": "terminated"}),
    ]
    assert (sidecar_events.sender().sent, sidecar_events.sender().failed) == (4, 0)
    assert warnings == []


def test_install_is_idempotent(sidecar):
    cfg = config.ThunderAgentConfig(sidecar_url=sidecar.url)
    sidecar_events.install(cfg, environ={"THUNDERAGENT_SIDECAR_TOKEN": "t"})
    first = sidecar_events.sender()
    sidecar_events.install(cfg, environ={"THUNDERAGENT_SIDECAR_TOKEN": "t"})
    assert sidecar_events.sender() is first


def test_missing_token_is_warned_and_sends_no_authorization_header(sidecar, warnings):
    sidecar_events.install(config.ThunderAgentConfig(sidecar_url=sidecar.url), environ={})
    assert warnings == [f"ThunderAgent: THUNDERAGENT_SIDECAR_TOKEN is not set: events to the "
                        f"sidecar at {sidecar.url} will be refused (set it to the sidecar's token)"]
    sidecar_events.notify("p", "terminated")
    assert sidecar_events.sender().flush(5.0)
    assert sidecar.received == [("/events", None, {"program_id": "p", "event": "terminated"})]


def test_notify_does_not_wait_for_a_slow_sidecar():
    slow = FakeSidecar(delay_s=0.2)
    sender = EventSender(slow.url, "t")
    try:
        start = time.monotonic()
        assert [sender.submit("p", "paused") for _ in range(3)] == [1, 2, 3]
        assert time.monotonic() - start < 0.1
        assert sender.flush(10.0)
        assert len(slow.received) == 3
    finally:
        sender.close()
        slow.close()


def test_refused_events_are_counted_and_warned_once_per_interval(warnings):
    refusing = FakeSidecar(status=401)
    warning = RateLimitedWarning(every_s=3600)
    sender = EventSender(refusing.url, "wrong", warning=warning)
    try:
        sender.submit("p", "paused")
        sender.submit("p", "resumed")
        assert sender.flush(5.0)
        assert (sender.sent, sender.failed, warning.suppressed) == (0, 2, 1)
        assert warnings == [
            f"ThunderAgent: sidecar event paused of program p not delivered to {refusing.url}"
            "/events: HTTP 401: {} (check --thunderagent-sidecar-url and "
            "THUNDERAGENT_SIDECAR_TOKEN)"]
    finally:
        sender.close()
        refusing.close()


def test_unreachable_sidecar_fails_without_raising():
    sender = EventSender("http://127.0.0.1:9", "t", timeout_s=0.5)  # port 9: discard, closed
    try:
        sender.submit("p", "terminated")
        assert sender.flush(5.0)
        assert (sender.sent, sender.failed) == (0, 1)
    finally:
        sender.close()


def test_full_queue_drops_the_event_and_says_so(warnings):
    slow = FakeSidecar(delay_s=0.3)
    sender = EventSender(slow.url, "t", max_queued=1, warning=RateLimitedWarning(every_s=3600))
    try:
        assert sender.submit("p", "paused") == 1  # taken by the thread, in flight
        time.sleep(0.1)
        assert sender.submit("p", "resumed") == 2  # queued
        assert sender.submit("p", "terminated") == 0  # no room
        assert sender.dropped == 1
        assert warnings == [
            f"ThunderAgent: sidecar event terminated of program p dropped: 1 events are queued "
            f"(is the sidecar at {slow.url}/events answering?)"]
        assert sender.flush(5.0)
        assert [body["event"] for _, _, body in slow.received] == ["paused", "resumed"]
    finally:
        sender.close()
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
