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
from typing import Any, Callable

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
DEFAULT_EVENT_RING = 10_000
# Acting programs' KV value halves every this many seconds of tool time: the
# paper's f(t) = 2^-t per 5 s tick. Measured against 15 s (benchmarks/results/agentic/tune).
DEFAULT_DECAY_HALF_LIFE_S = 5.0
# The program scheduler's check runs on this tick, and on every arrival and finish that
# could change a decision (ProgramScheduler.check_if_needed).
# Measured (benchmarks/results/agentic/tune): a 2 s tick lost throughput and hit rate, and
# watermarks 1.0/0.9 lost hit rate, against these; 0.90/0.80 was equal.
DEFAULT_TICK_S = 0.5
DEFAULT_HIGH_WATERMARK = 0.95
DEFAULT_LOW_WATERMARK = 0.85
# Below OpenAI's Python client's 600 s timeout, so a held call is answered before it gives up.
DEFAULT_MAX_PAUSE_S = 300.0
# Held calls are cheap (ids and a prompt each) but not free; one engine rarely has more than
# a few hundred agents paused at once. Beyond the bound a call is told to come back later.
DEFAULT_MAX_HELD = 1024
RETRY_AFTER_S = 5  # ten scheduler ticks: time for a pause or a finish to make room
# The launcher's sidecar destroys an environment unused this long (paused programs' excluded),
# so that an event that never arrived cannot keep one forever. Above the idle expiry of programs.
DEFAULT_SIDECAR_IDLE_TTL_S = 3600.0
# Our radix-cache backend's name, and SGLang's options that bring a cache of their own (ours
# is then not chosen): server_args attribute names; their flags are derived.
CACHE_BACKEND = "thunderagent"
OWN_CACHE_OPTIONS = ("enable_lmcache", "enable_flexkv", "enable_unified_cache_external_linker")
OWN_CACHE_FLAGS = ("--radix-cache-backend", "--disable-radix-cache",
                   *("--" + name.replace("_", "-") for name in OWN_CACHE_OPTIONS))


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


def _share(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")


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


def option(default, help: str, *, flag: str | None = None, metavar: str | None = None,
           parse: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None,
           switch: bool = False, on_off: bool = False, repeat: bool = False,
           convert: Callable[[Any], Any] | None = None):
    """A setting declared once: its default, and how its ``--thunderagent-*`` flag reads it.

    ``flag`` defaults to the field's name without a ``_s`` suffix (``idle_expiry_s`` ->
    ``--thunderagent-idle-expiry``); ``switch``: a flag without a value; ``on_off``: a bool
    given as ``on``/``off``; ``repeat``: given once per value (a tuple); ``convert``: applied
    to the parsed value."""
    return dataclasses.field(default=default, metadata={
        "flag": flag, "help": help, "metavar": metavar, "parse": parse, "choices": choices,
        "switch": switch, "on_off": on_off, "repeat": repeat, "convert": convert})


def _resolved_dirs(paths) -> tuple[str, ...]:
    return tuple(_resolved_dir(p) for p in paths)


def _resolved_dir(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _trace_file(path: str) -> str:
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; give a file name")
    if not resolved.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: its directory {resolved.parent} does not "
                                         "exist")
    return str(resolved)


@dataclasses.dataclass(frozen=True)
class ThunderAgentConfig:
    cache_dir: str | None = option(
        None, "Where the embedded demo model is built and kept "
        "(default: $THUNDERAGENT_CACHE_DIR or ~/.cache/thunderagent_sglang).",
        metavar="DIR", convert=_resolved_dir)
    demo_model: str = option(
        "llama", "Architecture of the demo model served when no --model-path is given "
        "(default: llama).", choices=DEMO_ARCHES)
    id_sources: tuple[str, ...] = option(
        DEFAULT_ID_SOURCES, "Where a request's program id is read from, first found wins: "
        "comma-separated header:NAME / body:FIELD or short names (default: "
        + ",".join(DEFAULT_ID_SOURCES) + ").", metavar="LIST", parse=_id_sources, convert=tuple)
    idle_expiry_s: float = option(
        DEFAULT_IDLE_EXPIRY_S, "End a program that has made no call for this long. A scheduler "
        "pause does not stop the clock; a held call and an operator's pause do; a tool 'start' "
        "hint (POST /programs/{id}/tool) without its 'end' protects the program for twice its "
        f"expected_s when that is longer (default: {DEFAULT_IDLE_EXPIRY_S:g}).",
        metavar="SECONDS", parse=_positive_float)
    max_terminated: int = option(
        DEFAULT_MAX_TERMINATED, "How many ended programs' records GET /programs keeps, oldest "
        f"dropped first (default: {DEFAULT_MAX_TERMINATED}).", metavar="N", parse=_positive_int)
    event_ring: int = option(
        DEFAULT_EVENT_RING, "How many program events GET /programs/events (the live view at "
        f"/thunderagent/view) keeps, oldest dropped first (default: {DEFAULT_EVENT_RING}).",
        metavar="N", parse=_positive_int)
    link_untagged: bool = option(
        False, "Give a call without a program id to the live program whose last sequence "
        "(prompt and output) its prompt continues, so unmodified agents are programs too "
        "(default: off; untagged calls keep plain SGLang behaviour).", switch=True)
    decay_half_life_s: float = option(
        DEFAULT_DECAY_HALF_LIFE_S, "An acting program's KV is worth context_tokens * "
        "2^(-tool_seconds / this) when ranking what to evict "
        f"(default: {DEFAULT_DECAY_HALF_LIFE_S:g}, the paper's).",
        metavar="SECONDS", parse=_positive_float)
    decay: str = option(
        "auto", "Whether an acting program's tokens count decayed when the scheduler sums "
        "demand (the paper's rule: more programs admitted than the pool holds, betting their "
        "KV is not all needed at once). auto: on while the measured decode steps show their "
        "batch shares 35%% of a step's time or more (a GPU: a larger batch is almost free), "
        "off below 25%% (a CPU: admitting more only buys recompute), unchanged between; "
        "logged when it changes (default: auto).", choices=("auto", "on", "off"))
    predicted_eviction: bool = option(
        True, "Rank an acting program's KV by the distance to its predicted return (the "
        "tool-duration model's median for its tool) instead of by how long its tool has run: "
        "a program predicted back soon keeps its KV, one predicted away long loses it first "
        "(default: on; off: the paper's decay by tool time alone).", on_off=True)
    superseded_first: bool = option(
        True, "When a program's latest sequence leaves a branch of the radix tree (its history "
        "was re-rendered), the nodes of that branch nothing else uses rank first for "
        "eviction, as an ended program's do (default: on; off: they rank as untagged KV).",
        on_off=True)
    offload: str = option(
        "auto", "When a program is paused and SGLang's host tier is on "
        "(--enable-hierarchical-cache), keep, offload or drop the KV it holds alone by a cost "
        "model (load-back time against recompute time), and load offloaded KV back when it "
        "resumes (default: auto).", choices=("off", "auto"))
    offload_bandwidth_gbps: float | None = option(
        None, "Host-to-device bandwidth for the offload cost model (default: measured at "
        "start-up and logged).", flag="offload-bandwidth", metavar="GB_PER_S",
        parse=_positive_float)
    offload_latency_s: float | None = option(
        None, "Fixed cost of one load-back for the offload cost model (default: measured at "
        "start-up and logged).", metavar="SECONDS", parse=_non_negative_float)
    recompute_rate: float | None = option(
        None, "Prefill rate for the offload cost model (default: measured on this server's "
        "prefill batches; until the first is timed, paused KV is offloaded, never dropped).",
        metavar="TOKENS_PER_S", parse=_positive_float)
    tool_offload: bool = option(
        True, "With offload on (--thunderagent-offload auto and SGLang's host tier), also "
        "decide keep, offload or drop when a program that is not paused starts acting (its "
        "call finished, or a tool start hint named its tool): the least memory-time of "
        "holding its own KV for the predicted tool time, the copies, or the recompute, while "
        "the pool is contended; predictions under two scheduler ticks keep (default: on).",
        on_off=True)
    prefetch: str = option(
        "predicted", "When KV offloaded at a tool boundary comes back. predicted: loaded back "
        "at the tool's predicted return less the transfer time, and at once on a tool 'end' "
        "hint; on-call: when the program's next call needs it (SGLang's load-back) "
        "(default: predicted).", choices=("predicted", "on-call"))
    scheduler: str = option(
        "thunder", "Program-aware scheduling: pause whole programs at tool boundaries while the "
        "active programs' KV demand exceeds the high watermark, resume them below the low one "
        "(default: thunder; off serves programs without pausing, for comparison).",
        choices=("off", "thunder"))
    tick_s: float = option(
        DEFAULT_TICK_S, "How often the scheduler re-checks demand besides every arrival and "
        f"finish (default: {DEFAULT_TICK_S:g}).", metavar="SECONDS", parse=_positive_float)
    high_watermark: float = option(
        DEFAULT_HIGH_WATERMARK, "Pause programs while active demand exceeds this fraction of "
        f"the KV pool (default: {DEFAULT_HIGH_WATERMARK:g}).", metavar="FRACTION",
        parse=_fraction)
    low_watermark: float = option(
        DEFAULT_LOW_WATERMARK, "Resume paused programs while demand stays below this fraction "
        f"of the KV pool (default: {DEFAULT_LOW_WATERMARK:g}; must not exceed the high "
        "watermark).", metavar="FRACTION", parse=_fraction)
    host_admission: float = option(
        0.0, "With SGLang's host tier on (--enable-hierarchical-cache), the scheduler counts "
        "this fraction of the host tier's tokens as room besides the device pool when it "
        "pauses and resumes programs: KV beyond the pool is written to the host and loaded "
        "back instead of recomputed (default: 0, the device pool alone; the simulator's GPU "
        "projections gain 8-18%% at 0.5, python -m sim.host_admission; not measured on a GPU).",
        metavar="FRACTION", parse=_share)
    resume_order: str = option(
        "smallest", "Which paused program resumes first within a scheduling class and "
        "priority: smallest (the fewest tokens of context, the paper's order) or attained (the "
        "least time spent reasoning so far: Autellix's least-attained-service order); aging "
        "bounds the wait either way (default: smallest).", choices=("smallest", "attained"))
    admission: str = option(
        "fixed", "How much the scheduler admits. fixed: programs whose demand fits the "
        "watermarks of the KV pool. feedback: the pool the watermarks apply to is scaled by a "
        "factor from 1 to 4, raised every 5 s while the engine idled with calls held for "
        "longer than it spent recomputing KV that eviction took, lowered when the recompute "
        "was the longer (both measured; changes logged) (default: fixed).",
        choices=("fixed", "feedback"))
    max_pause_s: float = option(
        DEFAULT_MAX_PAUSE_S, "Resume a program whose call has been held this long, whatever the "
        f"demand (default: {DEFAULT_MAX_PAUSE_S:g}, below the OpenAI client's 600 s timeout).",
        metavar="SECONDS", parse=_positive_float)
    max_held: int = option(
        DEFAULT_MAX_HELD, "At most this many calls are held at once (their programs paused or "
        "not admitted yet); beyond it a tagged call that would be held is answered 429 with "
        f"Retry-After: {RETRY_AFTER_S} (untagged calls are never held; default: "
        f"{DEFAULT_MAX_HELD}).", metavar="N", parse=_positive_int)
    backfill: bool = option(
        True, "When no call is in the engine and the head of the paused queue does not fit, "
        "resume the first waiting program that keeps demand at or below the high watermark "
        "(default: on; off waits for room below the low watermark in strict queue order).",
        on_off=True)
    decision_trace: str | None = option(
        None, "Write what the scheduler's decisions read and what they decided (config, calls "
        "held and admitted, finishes, ends, pauses, resumes, each decision with its snapshot) "
        "to FILE as JSON lines, for the simulator's replay (python -m sim replay FILE); "
        "tensor-parallel rank 0 only; for debugging and tests (default: off).",
        metavar="FILE", parse=_trace_file)
    sidecar: bool = option(
        False, "Start the tool-environment sidecar (python -m thunderagent_sglang.sidecar) with "
        "the server and stop it with the server; the server sends it program events.",
        switch=True)
    sidecar_url: str | None = option(
        None, "Send program events to a sidecar already running at URL (its token from "
        "THUNDERAGENT_SIDECAR_TOKEN).", metavar="URL")
    sidecar_base_root: tuple[str, ...] = option(
        (), "A directory the started sidecar may take base directories from (its --base-root; "
        "repeatable). Any other base_dir is refused with 403 (default: the sidecar's "
        "ROOT/bases only).", metavar="DIR", repeat=True, convert=_resolved_dirs)
    sidecar_allow_network: bool = option(
        False, "Let the started sidecar's environments ask for the network (its "
        "--allow-network; default: off, each command has only its own loopback).", switch=True)
    sidecar_idle_ttl_s: float = option(
        DEFAULT_SIDECAR_IDLE_TTL_S, "The started sidecar destroys an environment unused this "
        "long, paused programs' excepted (its --idle-ttl), so a lost event cannot keep one "
        f"forever (default: {DEFAULT_SIDECAR_IDLE_TTL_S:g}).", metavar="SECONDS",
        parse=_positive_float)

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
        for name in ("id_sources", "sidecar_base_root"):  # JSON gives lists
            if name in values:
                values[name] = tuple(values[name])
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


def flag_of(field: dataclasses.Field) -> str:
    name = field.metadata.get("flag") or field.name.removesuffix("_s").replace("_", "-")
    return FLAG_PREFIX + name


def add_cli_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Our flags, one per field of ``ThunderAgentConfig``, in its order."""
    group = parser.add_argument_group(
        "ThunderAgent-SGLang",
        "Program-aware serving. Set THUNDERAGENT_DISABLE=1 to run plain SGLang "
        "(CPU platform support stays on). Operator routes (pause, resume, releasing another "
        "client's program) take SGLang's --admin-api-key when one is set.",
    )
    for field in dataclasses.fields(ThunderAgentConfig):
        meta = field.metadata
        if meta["switch"]:
            group.add_argument(flag_of(field), action="store_true", help=meta["help"])
            continue
        kwargs = {"help": meta["help"], "default": field.default}
        if meta["repeat"]:
            kwargs.update(action="append", default=None)  # argparse appends to a list
        if meta["on_off"]:
            kwargs.update(choices=("on", "off"), default="on" if field.default else "off")
        elif meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["parse"]:
            kwargs["type"] = meta["parse"]
        group.add_argument(flag_of(field), **kwargs)
    return group


def from_namespace(ns: argparse.Namespace) -> ThunderAgentConfig:
    """The settings from parsed flags (``add_cli_group``), checked across flags."""
    values = {}
    for field in dataclasses.fields(ThunderAgentConfig):
        meta = field.metadata
        value = getattr(ns, flag_of(field)[2:].replace("-", "_"))
        if meta["on_off"]:
            value = value == "on"
        if meta["repeat"] and value is None:
            value = field.default
        if meta["convert"] is not None and value is not None:
            value = meta["convert"](value)
        values[field.name] = value
    if (values["sidecar_base_root"] or values["sidecar_allow_network"]) and not values["sidecar"]:
        raise ConfigError("--thunderagent-sidecar-base-root and --thunderagent-sidecar-allow-network "
                          "set up the sidecar the server starts: add --thunderagent-sidecar, or "
                          "give them to the sidecar you run yourself (--base-root, "
                          "--allow-network)")
    if values["low_watermark"] > values["high_watermark"]:
        raise ConfigError(
            f"--thunderagent-low-watermark {values['low_watermark']:g} is above "
            f"--thunderagent-high-watermark {values['high_watermark']:g}: the low one "
            "must not exceed the high one")
    if values["sidecar"] and values["sidecar_url"]:
        raise ConfigError("--thunderagent-sidecar starts a sidecar and --thunderagent-sidecar-url "
                          "uses one already running: give one of them")
    return ThunderAgentConfig(**values)
