"""Reports to the ThunderAgent server, in order, from one background task; a failure is logged
and never fails the sidecar's own work.

- Each exec as a tool phase of its program: ``POST {server}/programs/{id}/tool
  {"event": "start"|"end", "expected_s"?, "tool"?}``.
- Each program's environments when they change (created, destroyed, paused, resumed, a command
  started or ended, disk use): ``PUT {server}/programs/{id}/environments {"environments":
  [...]}`` (``program.environments``), the report made when it is sent. An unchanged report is
  not sent again; one the server refused (a program it does not run yet, or no longer) is
  offered again after ``retry_s`` or when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable
from urllib.parse import quote

import httpx

from thunderagent_sglang.sidecar.settings import SERVER_KEY_ENV

log = logging.getLogger("thunderagent_sglang.sidecar")
ENVS = "environments"


class ServerReporter:
    def __init__(self, server_url: str | None,
                 summarize: Callable[[str], list[dict]] | None = None,
                 timeout: float = 2.0, retry_s: float = 5.0, clock=time.monotonic):
        self.server_url = server_url.rstrip("/") if server_url else None
        self.summarize = summarize  # program id -> its environments report
        self.timeout, self.retry_s, self.clock = timeout, retry_s, clock
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._queued: set[str] = set()  # programs with an environments report in the queue
        self._last: dict[str, list[dict]] = {}  # the last report the server took, by program
        self._refused: dict[str, tuple[list[dict], float]] = {}  # report, when
        self._failing = False  # in a streak of failed environment reports (warned once)

    def start(self) -> None:
        if self.server_url and self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            self._task = None

    def tool(self, program_id: str, event: str, expected_s: float | None = None,
             tool: str | None = None) -> None:
        if self._queue is not None:
            body = {"event": event}
            if expected_s is not None:
                body["expected_s"] = expected_s
            if tool is not None:
                body["tool"] = tool
            self._queue.put_nowait((program_id, body))

    def environments(self, program_id: str | None) -> None:
        """The program's environments may have changed: report them (once per queue pass)."""
        if self._queue is not None and self.summarize is not None and program_id is not None \
                and program_id not in self._queued:
            self._queued.add(program_id)
            self._queue.put_nowait((program_id, ENVS))

    def sweep(self, program_ids: set[str]) -> None:
        """Every program with environments, and every one whose last report the server took
        (its environments may be gone): disk use and states change without a request."""
        for program_id in sorted(program_ids | set(self._last) | set(self._refused)):
            self.environments(program_id)

    async def _run(self) -> None:
        key = os.environ.get(SERVER_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers) as client:
            while True:
                program_id, body = await self._queue.get()
                try:
                    if body == ENVS:
                        await self._send_environments(client, program_id)
                    else:
                        await self._send_tool(client, program_id, body)
                finally:
                    self._queue.task_done()

    def _url(self, program_id: str, route: str) -> str:
        return f"{self.server_url}/programs/{quote(program_id, safe='')}/{route}"

    async def _send_tool(self, client: httpx.AsyncClient, program_id: str, body: dict) -> None:
        try:
            reply = await client.post(self._url(program_id, "tool"), json=body)
            if reply.status_code >= 400:
                raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            self.sent += 1
        except Exception as exc:
            self.failed += 1
            log.warning("tool phase %s of program %s not reported: %s", body["event"],
                        program_id, exc)

    async def _send_environments(self, client: httpx.AsyncClient, program_id: str) -> None:
        self._queued.discard(program_id)
        report = self.summarize(program_id)
        refused = self._refused.get(program_id)
        if report == self._last.get(program_id) or (
                refused is not None and refused[0] == report
                and self.clock() - refused[1] < self.retry_s):
            return
        try:
            reply = await client.put(self._url(program_id, ENVS), json={ENVS: report})
            status, text = reply.status_code, reply.text[:200]
        except Exception as exc:  # noqa: BLE001 - the server may be down or restarting
            status, text = None, str(exc)
        if status is not None and status < 400:
            self.sent += 1
            self._failing = False
            self._refused.pop(program_id, None)
            if report:
                self._last[program_id] = report
            else:
                self._last.pop(program_id, None)  # nothing left to follow
            return
        self._last.pop(program_id, None)
        if status == 404 and not report:
            self._refused.pop(program_id, None)  # an ended program with nothing left: done
            return
        self._refused[program_id] = (report, self.clock())
        if status != 404:  # 404: the program has no call yet, or ended; offered again later
            self.failed += 1
            self._warn(program_id, f"HTTP {status}: {text}" if status else text)

    def _warn(self, program_id: str, why: str) -> None:
        """One warning per failure streak: the first program's, with how the rest fare in
        ``failed``; the next success ends the streak (no line per program every 5 s while the
        server is down)."""
        if not self._failing:
            self._failing = True
            log.warning("environments of program %s not reported: %s (retried every %g s; "
                        "further failures are not logged until a report goes through)",
                        program_id, why, self.retry_s)
