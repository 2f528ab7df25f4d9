"""The router's flags, as one frozen dataclass; a malformed backend URL is an error at start."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from thunderagent_sglang.program.identity import DEFAULT_ID_SOURCES, parse_id_sources


class SettingsError(ValueError):
    """A flag the router cannot start with (the message says what to pass)."""


NAME_RULE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Settings:
    backends: tuple[str, ...]
    names: tuple[str, ...] = ()  # each backend's name (default backend-0, backend-1, ...)
    host: str = "127.0.0.1"
    port: int = 30010
    poll_interval_s: float = 0.5
    down_after_s: float = 3.0
    silent_after_s: float = 60.0
    api_key: str | None = None
    admin_api_key: str | None = None  # guards PUT/DELETE /router/backends (off without it)
    backend_api_key: str | None = None
    backend_admin_key: str | None = None
    migration: bool = True
    max_wait_s: float = 300.0
    kv_storage_rate: float = 0.0  # tokens/s of a KV storage tier the replicas share; 0: none
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    id_sources: tuple[str, ...] = DEFAULT_ID_SOURCES
    log_level: str = "info"


def backend_url(text: str) -> str:
    """``http(s)://host:port[/prefix]`` without a trailing slash; SettingsError otherwise."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"backend {text!r} is not an http(s) URL such as "
                            "http://127.0.0.1:30000")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise SettingsError(f"backend {text!r} has an invalid port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(f"backend {text!r}: give scheme, host, port and path only "
                            "(keys go in --backend-api-key)")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def backend_name(text) -> str:
    if not isinstance(text, str) or not NAME_RULE.match(text):
        raise SettingsError(f"replica name {text!r} must be 1-64 characters of "
                            "[A-Za-z0-9._-]")
    return text


def default_name(i: int) -> str:
    """The name of the ``i``-th backend given without one."""
    return f"backend-{i}"


def backends(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(URLs, names) from ``URL1,NAME=URL2,...``; an unnamed backend is ``backend-<i>``."""
    urls, names = [], []
    for i, item in enumerate(x.strip() for x in text.split(",") if x.strip()):
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = default_name(i), item
        names.append(backend_name(name))
        urls.append(backend_url(url))
    if len(set(urls)) != len(urls):
        raise SettingsError(f"--backends names a replica twice: {text!r}")
    if len(set(names)) != len(names):
        raise SettingsError(f"--backends gives two replicas one name: {text!r}")
    return tuple(urls), tuple(names)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m thunderagent_sglang.router",
        description="A program-aware router in front of ThunderAgent-SGLang replicas: places "
        "each program on the replica with the most free KV demand capacity, keeps it there "
        "while its KV lives, moves a waiting program to a replica with room, and serves the "
        "same OpenAI, Anthropic, native and /programs routes (clients change only the URL).")
    p.add_argument("--backends", default="", metavar="URL1,NAME=URL2",
                   help="the replicas: our servers (python -m thunderagent_sglang.launch_server), "
                   "each optionally named (default backend-<i>); may be empty with "
                   "--admin-api-key, when replicas register themselves (PUT /router/backends)")
    p.add_argument("--host", default=Settings.host)
    p.add_argument("--port", type=int, default=Settings.port)
    p.add_argument("--poll-interval", type=float, default=Settings.poll_interval_s,
                   metavar="SECONDS", help="how often each replica's /programs is read "
                   "(default: the engine's tick, 0.5)")
    p.add_argument("--down-after", type=float, default=Settings.down_after_s, metavar="SECONDS",
                   help="a replica whose polls get errors for this long is taken out (default "
                   "3); one that refuses or resets connections is taken out at once")
    p.add_argument("--silent-after", type=float, default=Settings.silent_after_s,
                   metavar="SECONDS", help="a replica that accepts a poll but does not answer "
                   "it in this long is taken out (default 60: a long prefill can block a "
                   "CPU replica's scheduler for many seconds; it is busy, not gone)")
    p.add_argument("--api-key", default=os.environ.get("THUNDERAGENT_ROUTER_API_KEY"),
                   help="clients must send it as a bearer token (default: none); also the "
                   "replicas' key unless --backend-api-key is given")
    p.add_argument("--admin-api-key", default=os.environ.get("THUNDERAGENT_ROUTER_ADMIN_KEY"),
                   help="a bearer token for adding, replacing and removing replicas at run "
                   "time (PUT/DELETE /router/backends/NAME); without it those routes are off")
    p.add_argument("--backend-api-key", default=None,
                   help="the replicas' --api-key, for the router's own reads")
    p.add_argument("--backend-admin-key",
                   default=os.environ.get("THUNDERAGENT_ROUTER_BACKEND_ADMIN_KEY"),
                   help="the replicas' --admin-api-key, for moving programs (default: the "
                   "backend API key)")
    p.add_argument("--migration", choices=("on", "off"), default="on",
                   help="move waiting programs to replicas with room (default on)")
    p.add_argument("--max-wait", type=float, default=Settings.max_wait_s, metavar="SECONDS",
                   help="no program is moved after waiting this long: set it to the replicas' "
                   "--thunderagent-max-pause (default 300), which then resumes it by force")
    p.add_argument("--kv-storage-rate", type=float, default=0.0, metavar="TOKENS_PER_S",
                   help="the replicas share a KV storage tier (each started with "
                   "--hicache-storage-backend on one store, e.g. file on a shared directory) "
                   "that loads this many tokens per second: a move then costs loading the "
                   "program's KV there instead of recomputing it (default 0: no shared tier)")
    p.add_argument("--id-sources", default=",".join(DEFAULT_ID_SOURCES), metavar="LIST",
                   help="where a call's program id is read, as the server's "
                   "--thunderagent-id-sources")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    return p


def from_args(argv: list[str] | None = None) -> Settings:
    args = parser().parse_args(argv)
    for name in ("poll_interval", "down_after", "silent_after", "max_wait"):
        if not getattr(args, name) > 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be a positive number")
    if not 0 <= args.kv_storage_rate < float("inf"):
        raise SettingsError("--kv-storage-rate must be a number of tokens per second, 0 or "
                            "more (0: the replicas share no KV storage)")
    if not 0 <= args.port < 65536:
        raise SettingsError("--port must be in 0..65535")
    backend_key = args.backend_api_key or args.api_key
    urls, names = backends(args.backends)
    if not urls and not args.admin_api_key:
        raise SettingsError("--backends needs at least one URL (comma-separated), unless "
                            "replicas register themselves: then give --admin-api-key")
    return Settings(
        backends=urls, names=names, admin_api_key=args.admin_api_key,
        host=args.host, port=args.port,
        poll_interval_s=args.poll_interval, down_after_s=args.down_after,
        silent_after_s=args.silent_after, api_key=args.api_key,
        backend_api_key=backend_key, backend_admin_key=args.backend_admin_key or backend_key,
        migration=args.migration == "on", max_wait_s=args.max_wait,
        kv_storage_rate=args.kv_storage_rate,
        id_sources=parse_id_sources(args.id_sources), log_level=args.log_level)
