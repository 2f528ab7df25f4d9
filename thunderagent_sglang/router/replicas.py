"""The replicas as the router sees them: each one's last ``GET /programs?live=1``, read every
poll interval, and whether it is up.

A replica is ready once it answers; it is taken out after ``down_after_s`` without an answer
and used again when it answers again. A backend that answers without our ``/programs`` route
is plain SGLang: refused, with an error naming it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from thunderagent_sglang.policy.placement import ReplicaLoad
from thunderagent_sglang.router.settings import default_name

log = logging.getLogger("thunderagent.router")

NOT_OURS = ("{url} answers without a /programs route: it is plain SGLang or another server. "
            "The router needs ThunderAgent-SGLang replicas "
            "(python -m thunderagent_sglang.launch_server)")


@dataclass
class Replica:
    url: str
    label: str = ""  # its name: from --backends or its registration
    ready: bool = False
    refused: str | None = None  # why it cannot be used at all (plain SGLang)
    last_ok: float | None = None
    first_failure: float | None = None
    view: dict = field(default_factory=dict)  # its last /programs answer
    records: dict[str, dict] = field(default_factory=dict)  # live programs by id
    view_at: float = 0.0
    calls: int = 0  # calls sent and not answered
    pending: dict[str, float] = field(default_factory=dict)  # placed, not in a poll yet
    polls: int = 0
    poll_failures: int = 0
    poll_seconds: list[float] = field(default_factory=list)  # the last 256 poll latencies
    downs: int = 0
    waiting_tokens: int = 0  # of its last view: the context of programs with calls held
    mean_context: float = 0.0  # of its last view: a live program's mean context

    @property
    def name(self) -> str:
        return self.url

    def load(self) -> ReplicaLoad:
        """Its load for a placement: O(1) (the sums are taken once per poll, in ``saw``)."""
        sched = self.view.get("scheduler") or {}
        return ReplicaLoad(
            name=self.url, ready=self.ready, capacity_tokens=sched.get("capacity_tokens") or 0,
            high_tokens=sched.get("high_tokens") or 0, low_tokens=sched.get("low_tokens") or 0,
            footprint_tokens=sched.get("footprint_tokens") or 0.0,
            waiting_tokens=self.waiting_tokens,
            pending_tokens=round(self.mean_context * len(self.pending)), calls=self.calls,
            placed=len(self.pending),
            prefill_tokens_per_s=self.view.get("prefill_tokens_per_s"))

    def saw(self, view: dict, now: float, took_s: float) -> None:
        self.view, self.view_at = view, now
        self.records = {r["program_id"]: r for r in view.get("programs", [])
                        if isinstance(r, dict) and "program_id" in r}
        self.waiting_tokens = sum(
            r.get("context_tokens", 0) for r in self.records.values()
            if r.get("waiting") and r.get("status") in ("paused", "waiting"))
        known = [r["context_tokens"] for r in self.records.values() if r.get("context_tokens")]
        self.mean_context = sum(known) / len(known) if known else 0.0
        for pid in [p for p in self.pending if p in self.records or now - self.pending[p] > 10]:
            del self.pending[pid]
        self.polls += 1
        self.poll_seconds = [*self.poll_seconds[-255:], took_s]


class Fleet:
    """Every replica and the pollers that keep their views fresh."""

    def __init__(self, settings, client: httpx.AsyncClient, on_down=None, clock=time.monotonic):
        self.settings = settings
        self.client = client
        names = settings.names or tuple(map(default_name, range(len(settings.backends))))
        self.replicas = {url: Replica(url, name) for url, name in zip(settings.backends, names)}
        self.on_down = on_down or (lambda replica: None)
        self.clock = clock
        self._loops: dict[str, asyncio.Task] | None = None  # url -> its poll loop, once running
        self._headers = ({"Authorization": f"Bearer {settings.backend_api_key}"}
                         if settings.backend_api_key else {})

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.ready]

    def loads(self) -> list[ReplicaLoad]:
        return [r.load() for r in self.replicas.values()]

    async def poll_once(self, replica: Replica) -> None:
        start = self.clock()
        try:
            response = await self.client.get(f"{replica.url}/programs", params={"live": "1"},
                                             headers=self._headers,
                                             timeout=self.settings.silent_after_s)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # refused or reset: the server is gone, not slow
            return self._failed(replica, f"{type(exc).__name__}: {exc}", gone=True)
        except httpx.TimeoutException as exc:
            # accepted but not answered: a long prefill can block a CPU replica's scheduler
            return self._failed(replica, f"no answer in {self.settings.silent_after_s:g} s "
                                f"({type(exc).__name__})", slow=True)
        except httpx.HTTPError as exc:
            return self._failed(replica, f"{type(exc).__name__}: {exc}")
        if response.status_code == 404:
            if replica.refused is None:
                log.error(NOT_OURS.format(url=replica.url))
            replica.refused = NOT_OURS.format(url=replica.url)
            return self._failed(replica, "not a ThunderAgent-SGLang server")
        if response.status_code != 200:
            return self._failed(replica, f"HTTP {response.status_code}")
        try:
            view = response.json()
        except ValueError:
            return self._failed(replica, "a /programs answer that is not JSON")
        now = self.clock()
        replica.saw(view, now, now - start)
        replica.last_ok, replica.first_failure, replica.refused = now, None, None
        if not replica.ready:
            replica.ready = True
            log.info("replica %s is ready (%d live programs)", replica.url, len(replica.records))

    def _failed(self, replica: Replica, why: str, gone: bool = False,
                slow: bool = False) -> None:
        """A refused or reset connection takes the replica out at once; error answers once it
        has not answered well for ``down_after_s``; a poll that is accepted but not answered
        (``slow``) is one ``silent_after_s`` long, and that is the bound for silence."""
        now = self.clock()
        replica.poll_failures += 1
        if replica.first_failure is None:
            replica.first_failure = now
        since = replica.last_ok if replica.last_ok is not None else replica.first_failure
        if replica.ready and (gone or slow or replica.refused
                              or now - since >= self.settings.down_after_s):
            self.take_out(replica, why)
        elif not replica.ready and replica.polls == 0 and replica.poll_failures == 1:
            log.warning("replica %s is not answering yet (%s); probing again", replica.url, why)

    def take_out(self, replica: Replica, why: str) -> None:
        if not replica.ready:
            return
        replica.ready, replica.records, replica.pending = False, {}, {}
        replica.downs += 1
        log.warning("replica %s taken out: %s", replica.url, why)
        self.on_down(replica)

    @property
    def names(self) -> dict[str, str]:
        """Replica name -> URL (each replica carries its name as ``label``)."""
        return {r.label: r.url for r in self.replicas.values()}

    def register(self, name: str, url: str) -> str | None:
        """Add replica ``name`` at ``url``, or move it there (the replica at its old URL is
        taken out: its programs' KV is lost). Returns the old URL, if it had another. A URL
        registered under another name is a ValueError."""
        owner = self.replicas.get(url)
        if owner is not None and owner.label != name:
            raise ValueError(f"{url} is already registered as {owner.label!r}")
        old = self.names.get(name)
        if old == url:
            return None
        if old is not None:
            self.remove(name)
        replica = self.replicas[url] = Replica(url, name)
        if self._loops is not None:
            self._loops[url] = asyncio.create_task(self._poll_loop(replica))
        log.info("replica %s registered at %s%s", name, url, f" (was {old})" if old else "")
        return old

    def remove(self, name: str) -> str | None:
        """Stop using replica ``name`` (as if it went down); its URL, or None if unknown."""
        url = self.names.get(name)
        if url is None:
            return None
        replica = self.replicas.pop(url)
        if self._loops is not None and url in self._loops:
            self._loops.pop(url).cancel()
        if replica.ready:
            self.take_out(replica, "removed")
        else:
            self.on_down(replica)  # anything still placed on it is placed again
        log.info("replica %s at %s removed", name, url)
        return url

    async def poll_round(self) -> None:
        await asyncio.gather(*(self.poll_once(r) for r in list(self.replicas.values())))

    async def _poll_loop(self, replica: Replica) -> None:
        """One replica's polls: a slow one does not delay the others'."""
        while True:
            started = self.clock()
            await self.poll_once(replica)
            await asyncio.sleep(max(0.0, self.settings.poll_interval_s - (self.clock() - started)))

    async def run(self, after_round=None) -> None:
        """Poll every replica on its own loop; ``after_round`` every poll interval."""
        self._loops = {url: asyncio.create_task(self._poll_loop(r))
                       for url, r in self.replicas.items()}
        try:
            while True:
                started = self.clock()
                if after_round is not None:
                    try:
                        await after_round()
                    except Exception:  # noqa: BLE001 - the loop must go on
                        log.exception("router: a placement round failed")
                await asyncio.sleep(max(0.0, self.settings.poll_interval_s
                                        - (self.clock() - started)))
        finally:
            for loop in self._loops.values():
                loop.cancel()
            self._loops = None


def refused_backends(settings) -> list[str]:
    """At start: the backends that answer but are not ours (each an error naming it). One
    that does not answer yet is not refused: it is probed again until it does."""
    headers = ({"Authorization": f"Bearer {settings.backend_api_key}"}
               if settings.backend_api_key else {})
    refused = []
    with httpx.Client(timeout=5) as client:
        for url in settings.backends:
            try:
                response = client.get(f"{url}/programs", params={"live": "1"}, headers=headers)
            except httpx.HTTPError:
                continue
            if response.status_code == 404:
                refused.append(NOT_OURS.format(url=url))
    return refused
