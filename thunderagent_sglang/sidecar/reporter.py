"""Reports each exec to the ThunderAgent server as a tool phase of its program.

``POST {server}/programs/{id}/tool {"event": "start"|"end", "expected_s"?, "tool"?}``, in
order, from one background task; a failure is logged and never fails the exec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import quote

import httpx

from thunderagent_sglang.sidecar.settings import SERVER_KEY_ENV

log = logging.getLogger("thunderagent_sglang.sidecar")


class ToolReporter:
    def __init__(self, server_url: str | None, timeout: float = 2.0):
        self.server_url = server_url.rstrip("/") if server_url else None
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

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

    async def _run(self) -> None:
        key = os.environ.get(SERVER_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers) as client:
            while True:
                program_id, body = await self._queue.get()
                try:
                    url = f"{self.server_url}/programs/{quote(program_id, safe='')}/tool"
                    reply = await client.post(url, json=body)
                    if reply.status_code >= 400:
                        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
                    self.sent += 1
                except Exception as exc:
                    self.failed += 1
                    log.warning("tool phase %s of program %s not reported: %s",
                                body["event"], program_id, exc)
                finally:
                    self._queue.task_done()
