"""``Router``: the one object of the router process. It owns the fleet (replica views), what
it remembers (placements, replica-local state), the prefix affinity and the HTTP client, and
runs one placement round after each poll round (adopting, forgetting and moving programs)."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote, urlsplit

import httpx

from thunderagent_sglang.policy import placement
from thunderagent_sglang.policy.affinity import PrefixAffinity
from thunderagent_sglang.router.replicas import Fleet, Replica
from thunderagent_sglang.router.state import RouterState

log = logging.getLogger("thunderagent.router")
GONE_WITHIN_S = 3.0  # how long a replica that dropped a call is watched for its death
GONE_PROBE_EVERY_S = 0.25
REFRESH_WAIT_S = 1.0  # the most a release through the router waits to re-read its replica


class Router:
    def __init__(self, settings, client: httpx.AsyncClient | None = None,
                 clock=time.monotonic):
        self.settings = settings
        self.clock = clock
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            headers={"accept-encoding": "identity"})
        self.state = RouterState()
        self.affinity = PrefixAffinity()
        self.fleet = Fleet(settings, self.client, on_down=self._replica_down, clock=clock)
        self._admin = ({"Authorization": f"Bearer {settings.backend_admin_key}"}
                       if settings.backend_admin_key else {})
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # strays' ends, re-reads: cancelled at stop
        self._ending: dict[tuple[str, str], asyncio.Task] = {}  # (replica, program) -> its end

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.fleet.poll_round()
        self._task = asyncio.create_task(self.fleet.run(after_round=self.placement_round))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._background):
            task.cancel()
        await self.client.aclose()

    def _replica_down(self, replica: Replica) -> None:
        lost = self.state.replica_down(replica.url)
        self.affinity.forget(replica.url)
        if lost:
            log.warning("replica %s: %d program(s) lost their KV; each is placed again at its "
                        "next call", replica.url, lost)

    # ---- placement ---------------------------------------------------------------------------

    def replica_for(self, program_id: str | None, keys: list[bytes],
                    exclude: frozenset[str] = frozenset()) -> Replica | None:
        """A program's replica (placing it if it has none that is ready), or an untagged
        call's."""
        replicas = self.fleet.replicas
        if program_id is not None:
            where = replicas.get(self.state.placement.get(program_id))
            if where is not None and where.url not in exclude and where.ready:
                return where
        loads = [load for load in self.fleet.loads() if load.name not in exclude]
        matched = {load.name: self.affinity.matched(load.name, keys) for load in loads}
        if program_id is None:
            chosen = placement.place_untagged(loads, matched, len(keys))
            return replicas[chosen] if chosen else None
        chosen = placement.place_new(loads, matched)
        if chosen is None:
            return None
        self.state.placement[program_id] = chosen
        replicas[chosen].pending[program_id] = self.clock()
        self.state.counters["placed"] += 1
        if program_id in self.state.lost:
            self.state.counters["replaced_lost"] += 1
        return replicas[chosen]

    async def gone(self, replica: Replica, within_s: float = GONE_WITHIN_S) -> bool:
        """Whether ``replica`` refuses new connections within ``within_s`` (its server is
        dead, not slow). A dying server can drop its calls a moment before it stops
        listening (its scheduler goes first), so it is probed a few times. A fresh connection
        each time, not the pool's: a pooled one to a dead server fails differently."""
        parts = urlsplit(replica.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        deadline = self.clock() + within_s
        while True:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, port),
                    min(2.0, self.settings.connect_timeout_s))
            except asyncio.TimeoutError:  # (an OSError too) unreachable is not known dead
                return False
            except OSError:  # refused: nothing listens there any more
                return True
            writer.close()
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(GONE_PROBE_EVERY_S)

    async def wait_if_moving(self, program_id: str | None) -> None:
        event = self.state.moving.get(program_id) if program_id is not None else None
        if event is not None:
            await event.wait()

    # ---- the round after each poll -------------------------------------------------------------

    async def placement_round(self) -> None:
        now = self.clock()
        waiting: list[placement.Waiting] = []
        stray: list[tuple[Replica, str]] = []
        still_waiting = set()
        for replica in self.fleet.ready():
            self.state.forget_ended(replica.url, set(replica.records), set(replica.pending))
            for pid, record in replica.records.items():
                if pid not in self.state.placement:  # adopt what we see
                    self.state.placement[pid] = replica.url
                    if self.state.lost.get(pid) == replica.url:
                        del self.state.lost[pid]  # its replica came back with it: not lost
                where = self.state.placement[pid]
                if where != replica.url:
                    if not record.get("in_flight") and pid not in self.state.moving:
                        stray.append((replica, pid))
                    continue
                if record.get("waiting") and record.get("status") in ("paused", "waiting") \
                        and not record.get("operator_paused"):
                    may_move = not self._moved_here_unrun(pid, record)
                    waited_s = 0.0  # its wait counts once it may move
                    if may_move:
                        waited_s = now - self.state.waiting_since.setdefault(pid, now)
                        still_waiting.add(pid)
                    waiting.append(placement.Waiting(
                        pid, replica.url, int(record.get("context_tokens") or 0),
                        int(record.get("resident_tokens") or 0)
                        + int(record.get("host_tokens") or 0),
                        waited_s, int(record.get("priority") or 0), may_move))
        for pid in [p for p in self.state.waiting_since if p not in still_waiting]:
            del self.state.waiting_since[pid]
        for replica, pid in stray:  # live on a replica it is not placed on: end it there
            self._end_stray_soon(replica, pid)
        if self.settings.migration and waiting:
            loads = self.fleet.loads()
            moves = placement.plan_moves(loads, waiting, self.settings.max_wait_s,
                                         min_wait_s=self.settings.poll_interval_s,
                                         storage_tokens_per_s=self.settings.kv_storage_rate)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("router: waiting %s; free %s; moves %s",
                          [(w.program_id, w.context_tokens, round(w.waited_s, 1)) for w in waiting],
                          {r.name: round(r.free_tokens) for r in loads}, moves)
            await asyncio.gather(*(self.move(m) for m in moves))

    def _moved_here_unrun(self, pid: str, record: dict) -> bool:
        """Moved to this replica and no call run here yet: it stays until one has run (else
        two full replicas would pass it back and forth, each move priced as a re-prefill
        either way, until its call gives up after ``max_attempts`` hand-backs)."""
        return pid in self.state.moved and not record.get("steps")

    async def _migrate_call(self, url: str, program_id: str) -> httpx.Response | None:
        try:
            return await self.client.post(f"{url}/programs/{quote(program_id, safe='')}/migrate",
                                          headers=self._admin, timeout=10)
        except httpx.HTTPError as exc:  # a timeout's text is empty: name its type
            log.warning("router: could not move %s off %s: %s: %s", program_id, url,
                        type(exc).__name__, exc)
            return None

    async def refresh(self, replica: Replica, wait_s: float = REFRESH_WAIT_S) -> None:
        """Poll ``replica`` now (a program was released there), waiting at most ``wait_s``: a
        busy CPU replica can take seconds to answer, and the poll then ends in the
        background."""
        task = self._in_background(self.fleet.poll_once(replica))
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except asyncio.TimeoutError:
            log.debug("router: %s not re-read within %.1f s after a release; the poll goes on",
                      replica.url, wait_s)

    def _end_stray_soon(self, replica: Replica, program_id: str) -> None:
        """End it in the background, once at a time: a busy replica can take seconds to
        answer, and the round (moves of waiting programs) must not wait for it."""
        key = (replica.url, program_id)
        if key in self._ending:
            return
        task = self._ending[key] = self._in_background(self._end_stray(replica, program_id))
        task.add_done_callback(lambda _: self._ending.pop(key, None))

    def _in_background(self, coro) -> asyncio.Task:
        """A task the router does not await to its end; ``stop`` cancels what is left."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _end_stray(self, replica: Replica, program_id: str) -> None:
        response = await self._migrate_call(replica.url, program_id)
        if response is not None and response.status_code == 200:
            log.info("router: %s was live on %s as well as on %s; ended there (migrated)",
                     program_id, replica.url, self.state.placement.get(program_id))

    async def move(self, move: placement.Move) -> bool:
        """Place the program on ``move.target`` first (its next calls wait for the move), then
        end it on its source, whose held calls come back 421 and are sent to the target."""
        pid = move.program_id
        done = self.state.moving[pid] = asyncio.Event()
        target = self.fleet.replicas.get(move.target)
        if target is None:  # removed since the plan
            return False
        self.state.placement[pid] = move.target
        target.pending[pid] = self.clock()
        try:
            response = await self._migrate_call(move.source, pid)
            if response is not None and response.status_code == 200:
                self.state.counters["migrations"] += 1
                self.state.moved[pid] = move.source
                self.state.waiting_since.pop(pid, None)
                log.info("router: moved %s from %s to %s (staying: %.1f s, moving: %.1f s)",
                         pid, move.source, move.target, move.stay_s, move.move_s)
                return True
            self.state.counters["migrations_refused"] += 1
            self.state.placement[pid] = move.source  # it started there meanwhile: it stays
            target.pending.pop(pid, None)
            return False
        finally:
            del self.state.moving[pid]
            done.set()
