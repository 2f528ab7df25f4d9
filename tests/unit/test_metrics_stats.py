"""/metrics never waits long on a busy scheduler: ``LatestStats`` and the middleware."""

import asyncio

from thunderagent_sglang.engine.metrics_http import LatestStats, MetricsMiddleware


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Scheduler:
    """A fake stats source: answers at once, or only once ``release`` is set."""

    def __init__(self, blocked: bool = False):
        self.calls = 0
        self.release = asyncio.Event()
        if not blocked:
            self.release.set()
        self.answer = (200, {"n": 0})

    async def fetch(self):
        self.calls += 1
        await self.release.wait()
        status, body = self.answer
        return status, {**body, "call": self.calls}


def run(coro):
    return asyncio.run(coro)


def test_a_free_scheduler_answers_fresh_stats():
    async def go():
        sched, clock = Scheduler(), Clock()
        stats = LatestStats(sched.fetch, wait_s=0.5, clock=clock)
        assert await stats.get() == ({"n": 0, "call": 1}, 0.0)
        clock.now += 3
        assert await stats.get() == ({"n": 0, "call": 2}, 0.0)
    run(go())


def test_a_busy_scheduler_gets_one_request_shared_by_scrapes_and_the_last_answer():
    async def go():
        sched, clock = Scheduler(), Clock()
        stats = LatestStats(sched.fetch, wait_s=0.05, clock=clock)
        assert await stats.get() == ({"n": 0, "call": 1}, 0.0)
        sched.release.clear()  # the scheduler is in a long prefill
        clock.now += 4
        both = await asyncio.gather(stats.get(), stats.get())
        assert both == [({"n": 0, "call": 1}, 4.0)] * 2
        assert sched.calls == 2  # one request in flight, not one per scrape
        sched.answer = (200, {"n": 7})
        sched.release.set()
        await stats.pending  # the shared request's answer is kept
        assert (stats.body, stats.answered_at) == ({"n": 7, "call": 2}, 104.0)
        assert await stats.get() == ({"n": 7, "call": 3}, 0.0)  # a new scrape asks again
    run(go())


def test_before_any_answer_there_is_nothing_to_show():
    async def go():
        sched = Scheduler(blocked=True)
        stats = LatestStats(sched.fetch, wait_s=0.01, clock=Clock())
        assert await stats.get() == (None, 0.0)
        sched.release.set()
    run(go())


def test_a_failed_or_refused_answer_keeps_the_last_stats():
    async def go():
        sched, clock = Scheduler(), Clock()
        stats = LatestStats(sched.fetch, wait_s=0.5, clock=clock)
        await stats.get()
        clock.now += 2
        sched.answer = (500, {"error": "boom"})
        assert await stats.get() == ({"n": 0, "call": 1}, 2.0)

        async def broken():
            raise ConnectionError("scheduler gone")
        stats.fetch = broken
        clock.now += 1
        assert await stats.get() == ({"n": 0, "call": 1}, 3.0)
    run(go())


STATS = {"counters": {"releases": {}, "prefill_tokens_computed": 0, "prefill_tokens_cached": 0,
                      "missed_evicted_tokens": 0, "missed_changed_tokens": 0,
                      "requests_arrived": 5, "requests_finished": 4, "pauses": 0,
                      "resumes": 0, "decode_tokens": 0, "programs_created": 1},
         "live": {"status": {"active": 1}, "phase": {"reasoning": 1}}}


async def sglang_metrics(scope, receive, send):
    body = b"sglang:token_usage 0.25\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def scrape(middleware) -> str:
    sent = []

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}
    run(middleware(scope, None, send))
    assert sent[0]["status"] == 200
    return sent[1]["body"].decode()


def test_the_middleware_appends_ours_with_their_age_after_sglangs():
    async def fetch():
        return 200, STATS
    text = scrape(MetricsMiddleware(sglang_metrics, fetch))
    lines = text.splitlines()
    assert lines[0] == "sglang:token_usage 0.25"
    assert 'thunderagent_requests_total{event="arrived"} 5.0' in lines
    assert lines[-1] == "thunderagent_stats_age_seconds 0.0"


def test_without_any_stats_sglangs_series_are_served_alone():
    async def fetch():
        return 503, {"error": "starting"}
    assert scrape(MetricsMiddleware(sglang_metrics, fetch)) == "sglang:token_usage 0.25\n"
