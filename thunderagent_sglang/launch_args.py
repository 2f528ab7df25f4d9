"""How the launcher turns a command line into SGLang's: pure, no SGLang import.

``split_args`` separates our ``--thunderagent-*`` flags from SGLang's;
``plan_launch`` adds the CPU engine and demo-model defaults, never overriding
a flag the user passed, and says what it added so the launcher can log it.
"""

from __future__ import annotations

import argparse
import dataclasses

from thunderagent_sglang import config

# A bounded KV pool on a CPU: on CPU --mem-fraction-static is a fraction of
# system RAM (0.05 gave 2 M tokens), far more than a CPU can use.
CPU_MAX_TOTAL_TOKENS = 65536
CPU_ENGINE_ENV = "SGLANG_USE_CPU_ENGINE"
# Tensor parallelism on a CPU: the cores of each rank (SGLang otherwise wants a NUMA node per
# rank), and no NCCL: a CUDA build of torch ships libnccl, which SGLang would then try to use
# on the CPU device; a library path that does not load turns it off (gloo all-reduce instead).
OMP_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"
NCCL_SO_ENV = "SGLANG_NCCL_SO_PATH"
NO_NCCL = "/nonexistent/thunderagent-cpu-engine-uses-gloo-not-nccl.so"
TP_FLAGS = ("--tp-size", "--tp", "--tensor-parallel-size")  # the cluster reads these too
CACHE_BACKEND = config.CACHE_BACKEND
OWN_CACHE_FLAGS = config.OWN_CACHE_FLAGS  # ours is then not chosen


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]  # for sglang's prepare_server_args
    env: dict[str, str]  # to set before SGLang is imported
    notes: list[str]  # what was chosen on the user's behalf, for the log


def our_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config.add_cli_group(parser)
    return parser


def split_args(argv: list[str]) -> tuple[config.ThunderAgentConfig, list[str]]:
    """Our settings, and the rest of the command line for SGLang.

    An unknown ``--thunderagent-*`` flag is an argparse error naming it.
    """
    parser = our_parser()
    ns, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.split("=", 1)[0].startswith(config.FLAG_PREFIX)]
    if unknown:
        parser.prog = "python -m thunderagent_sglang.launch_server"
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return config.from_namespace(ns), rest
    except config.ConfigError as exc:
        parser.prog = "python -m thunderagent_sglang.launch_server"
        parser.error(str(exc))


def has_flag(argv: list[str], *names: str) -> bool:
    """Whether the user passed any of ``names`` (``--x v`` or ``--x=v``)."""
    return any(a.split("=", 1)[0] in names for a in argv if a.startswith("--"))


def plan_launch(
    argv: list[str],
    *,
    gpu_available: bool,
    demo_model_dir: str | None,
    environ: dict[str, str],
    program_features: bool = True,
    cpus: tuple[int, ...] = (),
) -> LaunchPlan:
    """SGLang's argv and environment for this machine.

    ``demo_model_dir`` is used only when the user gave no model (and no
    ``--config`` file, which may name one). With ``program_features`` our radix
    cache backend is selected unless the user chose a cache of their own.
    """
    argv = list(argv)
    env: dict[str, str] = {}
    notes: list[str] = []
    device = flag_value(argv, "--device")
    if device == "cpu" or (device is None and not gpu_available):
        _plan_cpu(argv, env, notes, environ)
        _plan_cpu_ranks(argv, env, notes, environ, cpus)
    if program_features and not has_flag(argv, *OWN_CACHE_FLAGS):
        argv += ["--radix-cache-backend", CACHE_BACKEND]
        notes.append(f"--radix-cache-backend {CACHE_BACKEND} (program-aware radix cache)")
    if demo_model_dir is not None and needs_demo_model(argv):
        argv += ["--model-path", demo_model_dir]
        notes.append(f"--model-path {demo_model_dir} (embedded demo model)")
        if not has_flag(argv, "--dtype"):
            argv += ["--dtype", "float32"]
            notes.append("--dtype float32 (the demo model's dtype)")
    return LaunchPlan(argv=argv, env=env, notes=notes)


def flag_value(argv: list[str], name: str) -> str | None:
    """The value the user gave to ``name``, the last one winning, else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def needs_demo_model(argv: list[str]) -> bool:
    return not has_flag(argv, "--model-path", "--model", "--config")


def tp_size(argv: list[str]) -> int:
    """The tensor-parallel size the user asked for (1 when not given or not a number: SGLang
    then says what is wrong)."""
    values = [v for v in (flag_value(argv, f) for f in TP_FLAGS) if v is not None]
    try:
        return int(values[-1]) if values else 1
    except ValueError:
        return 1


def cpu_bind(ranks: int, cpus: tuple[int, ...]) -> str:
    """``SGLANG_CPU_OMP_THREADS_BIND`` for ``ranks`` ranks over ``cpus``: equal runs of cores
    (``0|1``, ``0-3|4-7``); ranks share cores when there are fewer cores than ranks."""
    cpus = tuple(sorted(cpus)) or (0,)
    if len(cpus) < ranks:
        return "|".join(str(cpus[i % len(cpus)]) for i in range(ranks))
    size = len(cpus) // ranks
    return "|".join(_span(cpus[i * size:(i + 1) * size]) for i in range(ranks))


def _span(group: tuple[int, ...]) -> str:
    if len(group) == 1:
        return str(group[0])
    if group[-1] - group[0] == len(group) - 1:
        return f"{group[0]}-{group[-1]}"
    return ",".join(map(str, group))


def _plan_cpu_ranks(argv, env, notes, environ, cpus) -> None:
    ranks = tp_size(argv)
    if ranks <= 1:
        return
    if not environ.get(OMP_BIND_ENV):  # unset or empty (SGLang reads empty as one group)
        env[OMP_BIND_ENV] = cpu_bind(ranks, cpus)
        notes.append(f"{OMP_BIND_ENV}={env[OMP_BIND_ENV]} (the cores of each of {ranks} "
                     "tensor-parallel ranks)")
    if not environ.get(NCCL_SO_ENV):
        env[NCCL_SO_ENV] = NO_NCCL
        notes.append(f"{NCCL_SO_ENV}={NO_NCCL} (no NCCL on a CPU: ranks all-reduce over gloo)")


def _plan_cpu(argv, env, notes, environ) -> None:
    if environ.get(CPU_ENGINE_ENV) is None:
        env[CPU_ENGINE_ENV] = "1"
        notes.append(f"{CPU_ENGINE_ENV}=1")
    if not has_flag(argv, "--device"):
        argv += ["--device", "cpu"]
        notes.append("--device cpu")
    if not has_flag(argv, "--sleep-on-idle"):
        argv.append("--sleep-on-idle")
        notes.append("--sleep-on-idle (an idle scheduler would spin a core)")
    if not has_flag(argv, "--max-total-tokens", "--mem-fraction-static"):
        argv += ["--max-total-tokens", str(CPU_MAX_TOTAL_TOKENS)]
        notes.append(f"--max-total-tokens {CPU_MAX_TOTAL_TOKENS} (bounded KV pool)")
