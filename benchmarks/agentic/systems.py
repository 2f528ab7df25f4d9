"""The systems compared, all on the same model, device KV pool and machine.

Each is one server started through our launcher (``python -m
thunderagent_sglang.launch_server``); "plain" ones run with
``THUNDERAGENT_DISABLE=1`` (SGLang 0.5.23 as shipped, CPU platform support
only). The host-tier systems get the same host budget (``--hicache-ratio``
times the device pool). ``limit`` is plain SGLang with a pool so large that
nothing is ever evicted: the bound any scheduler can reach on this workload.
"""

from __future__ import annotations

import dataclasses

PLAIN = {"THUNDERAGENT_DISABLE": "1"}
# HiCache on a CPU (README, "CPU platform support").
HICACHE = ["--enable-hierarchical-cache", "--hicache-io-backend", "direct",
           "--hicache-mem-layout", "layer_first"]
# SGLang's own answer: evict low-priority KV first, program calls at high priority.
PRIORITY = ["--radix-eviction-policy", "priority", "--enable-priority-scheduling"]
PROGRAM_PRIORITY = 10


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    label: str  # for tables and plots
    args: tuple[str, ...]
    env: dict[str, str]
    ours: bool  # program-aware: /programs and thunderagent_ metrics exist
    call_fields: dict = dataclasses.field(default_factory=dict)  # extra JSON fields per call
    is_limit: bool = False
    front: str | None = None  # fleet mode: router | smg | proxy in front of the replicas
    id_in_body: bool = False  # the program id as body field program_id (the proxy reads no header)
    by_default: bool = True  # run when no --systems are named (the ablation's are not)
    front_args: tuple[str, ...] = ()  # fleet mode: extra flags of the front (our router's)


@dataclasses.dataclass(frozen=True)
class Pools:
    """Device KV pool (tokens), host tier as a multiple of it, and the limit's pool."""

    device_tokens: int
    host_ratio: float
    limit_tokens: int
    # SGLang's --hicache-write-policy for every host-tier system (the runner's --write-policy).
    write_policy: str


def host_tier(pools: Pools, write_policy: str | None = None) -> tuple[str, ...]:
    """SGLang's flags for a host tier of the budget's size (``write_policy``: the runner's by
    default)."""
    return (*HICACHE, "--hicache-ratio", f"{pools.host_ratio:g}",
            "--hicache-write-policy", write_policy or pools.write_policy)


def systems(pools: Pools) -> list[System]:
    device = ("--max-total-tokens", str(pools.device_tokens))
    host = host_tier(pools)
    return [
        System("plain", "SGLang (LRU)", device, PLAIN, ours=False),
        System("plain-priority", "SGLang priority eviction", (*device, *PRIORITY), PLAIN,
               ours=False, call_fields={"priority": PROGRAM_PRIORITY}),
        System("plain-hicache", f"SGLang + HiCache ({pools.write_policy.replace('_', '-')})",
               (*device, *host), PLAIN, ours=False),
        # the published proxy in front of one plain server (as its README runs it; installed
        # by benchmarks/fleet_baselines.sh): run only when named
        System("proxy", "SGLang + published ThunderAgent proxy (tr)",
               (*device, "--enable-metrics"), PLAIN, ours=False, front="proxy",
               id_in_body=True, by_default=False),
        System("ours-sched-off", "ThunderAgent eviction only (scheduler off)",
               (*device, "--thunderagent-scheduler", "off", "--thunderagent-offload", "off"), {},
               ours=True),
        System("ours-offload-off", "ThunderAgent (offload off)",
               (*device, "--thunderagent-offload", "off"), {}, ours=True),
        System("ours-offload-auto", "ThunderAgent + offload",
               (*device, *host, "--thunderagent-offload", "auto"), {}, ours=True),
        System("limit", "no eviction (limit)", ("--max-total-tokens", str(pools.limit_tokens)),
               PLAIN, ours=False, is_limit=True),
        *ablations(device, host),
    ]


# The ablation: ours with offload, one mechanism (on by default) switched off in turn.
# ours-offload-off and ours-sched-off are the ablation of offload and of the scheduler.
ABLATIONS = (
    ("tool-offload", "keep/offload/drop at tool boundaries", "--thunderagent-tool-offload", "off"),
    ("prefetch", "timed load-back (on-call instead)", "--thunderagent-prefetch", "on-call"),
    ("superseded", "superseded states first", "--thunderagent-superseded-first", "off"),
    ("decay-auto", "decay only where it pays (decay on instead)", "--thunderagent-decay", "on"),
)


def ablations(device: tuple[str, ...], host: tuple[str, ...]) -> list[System]:
    return [System(f"ours-no-{name}", f"ThunderAgent + offload, without {what}",
                   (*device, *host, "--thunderagent-offload", "auto", flag, value), {}, ours=True,
                   by_default=False)
            for name, what, flag, value in ABLATIONS]


def by_name(pools: Pools, names: list[str] | None) -> list[System]:
    """The named systems in table order (all but the ablation's when ``names`` is empty)."""
    table = systems(pools)
    if not names:
        return [s for s in table if s.by_default]
    known = {s.name for s in table}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {sorted(known)}")
    return [s for s in table if s.name in names]
