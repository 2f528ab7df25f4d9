"""Our settings in one typed place: the ``--thunderagent-*`` flags and environment.

The launcher parses the flags; the settings reach the server's subprocesses
(where the plugin runs) as JSON in ``THUNDERAGENT_CONFIG``. No SGLang import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from thunderagent_sglang.program.identity import DEFAULT_ID_SOURCES, parse_id_sources

CONFIG_ENV = "THUNDERAGENT_CONFIG"
DISABLE_ENV = "THUNDERAGENT_DISABLE"
FLAG_PREFIX = "--thunderagent-"
DEMO_ARCHES = ("llama", "qwen3")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message says which and what to do."""


# A program that neither calls nor runs a reported tool for this long is ended.
# Above the longest tool gaps seen in agent traces (test runs and research tools
# of 240-600 s) with margin; capacity is not held meanwhile, since acting
# programs' KV decays. Paused time and reported tool time do not count.
DEFAULT_IDLE_EXPIRY_S = 900.0
DEFAULT_MAX_TERMINATED = 10000
# Acting programs' KV value halves every this many seconds of tool time: the
# paper's f(t) = 2^-t per 5 s tick. Measured against 15 s (benchmarks/results/agentic/tune).
DEFAULT_DECAY_HALF_LIFE_S = 5.0
# The program scheduler's check runs on every arrival and finish, and on this tick.
# Measured (benchmarks/results/agentic/tune): a 2 s tick lost throughput and hit rate, and
# watermarks 1.0/0.9 lost hit rate, against these; 0.90/0.80 was equal.
DEFAULT_TICK_S = 0.5
DEFAULT_HIGH_WATERMARK = 0.95
DEFAULT_LOW_WATERMARK = 0.85
# Below OpenAI's Python client's 600 s timeout, so a held call is answered before it gives up.
DEFAULT_MAX_PAUSE_S = 300.0


@dataclasses.dataclass(frozen=True)
class ThunderAgentConfig:
    cache_dir: str | None = None  # where the demo model is built; None = default
    demo_model: str = "llama"  # architecture of the embedded demo model
    id_sources: tuple[str, ...] = DEFAULT_ID_SOURCES
    idle_expiry_s: float = DEFAULT_IDLE_EXPIRY_S
    max_terminated: int = DEFAULT_MAX_TERMINATED
    link_untagged: bool = False
    decay_half_life_s: float = DEFAULT_DECAY_HALF_LIFE_S
    offload: str = "auto"  # off | auto (selective offload where a host tier exists)
    offload_bandwidth_gbps: float | None = None  # None: measured at start-up
    offload_latency_s: float | None = None  # None: measured at start-up
    recompute_rate: float | None = None  # prefill tokens/s; None: measured while serving
    scheduler: str = "thunder"  # off | thunder
    tick_s: float = DEFAULT_TICK_S
    high_watermark: float = DEFAULT_HIGH_WATERMARK
    low_watermark: float = DEFAULT_LOW_WATERMARK
    max_pause_s: float = DEFAULT_MAX_PAUSE_S
    backfill: bool = True  # an idle engine takes a waiting program that fits under high
    sidecar: bool = False  # start the tool-environment sidecar with the server
    sidecar_url: str | None = None  # a sidecar already running

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ThunderAgentConfig":
        raw = (os.environ if environ is None else environ).get(CONFIG_ENV)
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{CONFIG_ENV} is not valid JSON: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "id_sources" in values:
            values["id_sources"] = tuple(values["id_sources"])
        return cls(**values)


def program_features_disabled(environ: dict[str, str] | None = None) -> bool:
    """True when ``THUNDERAGENT_DISABLE`` asks for plain SGLang."""
    value = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{DISABLE_ENV}={value!r} is not understood: use 1 (plain SGLang) or 0"
    )


def add_cli_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(
        "ThunderAgent-SGLang",
        "Program-aware serving. Set THUNDERAGENT_DISABLE=1 to run plain SGLang "
        "(CPU platform support stays on).",
    )
    group.add_argument(
        "--thunderagent-cache-dir",
        metavar="DIR",
        default=None,
        help="Where the embedded demo model is built and kept "
        "(default: $THUNDERAGENT_CACHE_DIR or ~/.cache/thunderagent_sglang).",
    )
    group.add_argument(
        "--thunderagent-demo-model",
        choices=DEMO_ARCHES,
        default="llama",
        help="Architecture of the demo model served when no --model-path is "
        "given (default: llama).",
    )
    group.add_argument(
        "--thunderagent-id-sources",
        metavar="LIST",
        type=_id_sources,
        default=DEFAULT_ID_SOURCES,
        help="Where a request's program id is read from, first found wins: "
        "comma-separated header:NAME / body:FIELD or short names (default: "
        + ",".join(DEFAULT_ID_SOURCES) + ").",
    )
    group.add_argument(
        "--thunderagent-idle-expiry",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_IDLE_EXPIRY_S,
        help="End a program that has made no call for this long; paused time and "
        "tool time reported through POST /programs/{id}/tool do not count "
        f"(default: {DEFAULT_IDLE_EXPIRY_S:g}).",
    )
    group.add_argument(
        "--thunderagent-max-terminated",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_MAX_TERMINATED,
        help="How many ended programs' records GET /programs keeps, oldest dropped "
        f"first (default: {DEFAULT_MAX_TERMINATED}).",
    )
    group.add_argument(
        "--thunderagent-decay-half-life",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_DECAY_HALF_LIFE_S,
        help="An acting program's KV is worth context_tokens * 2^(-tool_seconds / this) when "
        f"ranking what to evict (default: {DEFAULT_DECAY_HALF_LIFE_S:g}, the paper's).",
    )
    group.add_argument(
        "--thunderagent-offload",
        choices=("off", "auto"),
        default="auto",
        help="When a program is paused and SGLang's host tier is on (--enable-hierarchical-cache), "
        "keep, offload or drop the KV it holds alone by a cost model (load-back time against "
        "recompute time), and load offloaded KV back when it resumes (default: auto).",
    )
    group.add_argument(
        "--thunderagent-offload-bandwidth",
        metavar="GB_PER_S",
        type=_positive_float,
        default=None,
        help="Host-to-device bandwidth for the offload cost model (default: measured at start-up "
        "and logged).",
    )
    group.add_argument(
        "--thunderagent-offload-latency",
        metavar="SECONDS",
        type=_non_negative_float,
        default=None,
        help="Fixed cost of one load-back for the offload cost model (default: measured at "
        "start-up and logged).",
    )
    group.add_argument(
        "--thunderagent-recompute-rate",
        metavar="TOKENS_PER_S",
        type=_positive_float,
        default=None,
        help="Prefill rate for the offload cost model (default: measured on this server's "
        "prefill batches; until the first is timed, paused KV is offloaded, never dropped).",
    )
    group.add_argument(
        "--thunderagent-scheduler",
        choices=("off", "thunder"),
        default="thunder",
        help="Program-aware scheduling: pause whole programs at tool boundaries while the "
        "active programs' KV demand exceeds the high watermark, resume them below the low one "
        "(default: thunder; off serves programs without pausing, for comparison).",
    )
    group.add_argument(
        "--thunderagent-tick",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TICK_S,
        help="How often the scheduler re-checks demand besides every arrival and finish "
        f"(default: {DEFAULT_TICK_S:g}).",
    )
    group.add_argument(
        "--thunderagent-high-watermark",
        metavar="FRACTION",
        type=_fraction,
        default=DEFAULT_HIGH_WATERMARK,
        help="Pause programs while active demand exceeds this fraction of the KV pool "
        f"(default: {DEFAULT_HIGH_WATERMARK:g}).",
    )
    group.add_argument(
        "--thunderagent-low-watermark",
        metavar="FRACTION",
        type=_fraction,
        default=DEFAULT_LOW_WATERMARK,
        help="Resume paused programs while demand stays below this fraction of the KV pool "
        f"(default: {DEFAULT_LOW_WATERMARK:g}; must not exceed the high watermark).",
    )
    group.add_argument(
        "--thunderagent-max-pause",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_MAX_PAUSE_S,
        help="Resume a program whose call has been held this long, whatever the demand "
        f"(default: {DEFAULT_MAX_PAUSE_S:g}, below the OpenAI client's 600 s timeout).",
    )
    group.add_argument(
        "--thunderagent-backfill",
        choices=("on", "off"),
        default="on",
        help="When no call is in the engine and the head of the paused queue does not fit, "
        "resume the first waiting program that keeps demand at or below the high watermark "
        "(default: on; off waits for room below the low watermark in strict queue order).",
    )
    group.add_argument(
        "--thunderagent-sidecar",
        action="store_true",
        help="Start the tool-environment sidecar (python -m thunderagent_sglang.sidecar) with "
        "the server and stop it with the server; the server sends it program events.",
    )
    group.add_argument(
        "--thunderagent-sidecar-url",
        metavar="URL",
        default=None,
        help="Send program events to a sidecar already running at URL (its token from "
        "THUNDERAGENT_SIDECAR_TOKEN).",
    )
    group.add_argument(
        "--thunderagent-link-untagged",
        action="store_true",
        help="Give a call without a program id to the live program whose last sequence "
        "(prompt and output) its prompt continues, so unmodified agents are programs too "
        "(default: off; untagged calls keep plain SGLang behaviour).",
    )
    return group


def _id_sources(text: str) -> tuple[str, ...]:
    try:
        return parse_id_sources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(text: str, ok, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "positive")


def _fraction(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def _non_negative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0, "zero or more")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def from_namespace(ns: argparse.Namespace) -> ThunderAgentConfig:
    if ns.thunderagent_low_watermark > ns.thunderagent_high_watermark:
        raise ConfigError(
            f"--thunderagent-low-watermark {ns.thunderagent_low_watermark:g} is above "
            f"--thunderagent-high-watermark {ns.thunderagent_high_watermark:g}: the low one "
            "must not exceed the high one")
    if ns.thunderagent_sidecar and ns.thunderagent_sidecar_url:
        raise ConfigError("--thunderagent-sidecar starts a sidecar and --thunderagent-sidecar-url "
                          "uses one already running: give one of them")
    cache_dir = ns.thunderagent_cache_dir
    if cache_dir is not None:
        cache_dir = str(Path(cache_dir).expanduser().resolve())
    return ThunderAgentConfig(
        cache_dir=cache_dir,
        demo_model=ns.thunderagent_demo_model,
        id_sources=tuple(ns.thunderagent_id_sources),
        idle_expiry_s=ns.thunderagent_idle_expiry,
        max_terminated=ns.thunderagent_max_terminated,
        link_untagged=ns.thunderagent_link_untagged,
        decay_half_life_s=ns.thunderagent_decay_half_life,
        offload=ns.thunderagent_offload,
        offload_bandwidth_gbps=ns.thunderagent_offload_bandwidth,
        offload_latency_s=ns.thunderagent_offload_latency,
        recompute_rate=ns.thunderagent_recompute_rate,
        scheduler=ns.thunderagent_scheduler,
        tick_s=ns.thunderagent_tick,
        high_watermark=ns.thunderagent_high_watermark,
        low_watermark=ns.thunderagent_low_watermark,
        max_pause_s=ns.thunderagent_max_pause,
        backfill=ns.thunderagent_backfill == "on",
        sidecar=ns.thunderagent_sidecar,
        sidecar_url=ns.thunderagent_sidecar_url,
    )
