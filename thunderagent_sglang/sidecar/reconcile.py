"""After a restart: ask the server which programs still run, and drop the rest's environments.

``GET {server}/programs`` (with the server's API key from ``THUNDERAGENT_SERVER_API_KEY``) is
tried every ``RETRY_S`` until it answers; meanwhile restored environments are destroyed only by
the idle time-to-live. Then ``EnvManager.reconcile`` destroys the restored environments of
programs the server does not list as live and keeps paused programs' (marked paused here).
"""

from __future__ import annotations

import asyncio
import logging
import os

import httpx

from thunderagent_sglang.sidecar.manager import EnvManager
from thunderagent_sglang.sidecar.settings import SERVER_KEY_ENV

log = logging.getLogger("thunderagent_sglang.sidecar")
RETRY_S = 2.0


async def programs(client: httpx.AsyncClient, server_url: str) -> list[dict]:
    reply = await client.get(f"{server_url.rstrip('/')}/programs")
    reply.raise_for_status()
    body = reply.json()
    if not isinstance(body, dict) or not isinstance(body.get("programs"), list):
        raise ValueError("GET /programs did not answer {\"programs\": [...]}")
    return [p for p in body["programs"] if isinstance(p, dict)]


async def reconcile_loop(manager: EnvManager, server_url: str, blocking,
                         retry_s: float = RETRY_S) -> None:
    """Runs until one reconciliation is done (nothing to do without restored environments)."""
    if not manager.unreconciled and not manager.unreconciled_programs:
        return
    key = os.environ.get(SERVER_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    warned = False
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        while True:
            try:
                listed = await programs(client, server_url)
            except (httpx.HTTPError, ValueError) as exc:
                if not warned:
                    log.warning("cannot ask the server at %s which programs run (%s): restored "
                                "environments stay until it answers or their idle TTL ends",
                                server_url, exc)
                    warned = True
                await asyncio.sleep(retry_s)
                continue
            destroyed = await blocking(manager.reconcile, listed)
            log.info("reconciled with the server: %d restored environments destroyed",
                     len(destroyed))
            return
