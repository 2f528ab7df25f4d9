"""What ``plugin.register()`` does in each SGLang process.

Platform support (the sgl_kernel stand-in, HiCache on a CPU) is always on;
program-aware features are off under ``THUNDERAGENT_DISABLE=1``.
"""

from __future__ import annotations

import os
import sys

from thunderagent_sglang import __version__, compat, config
from thunderagent_sglang.engine import cpu_platform, debug_memcheck
from thunderagent_sglang.engine.logs import get_logger

# SGLang calls load_plugins() from these functions in its subprocesses.
_ROLE_BY_FUNCTION = {
    compat.RUN_SCHEDULER_PROCESS: "scheduler",
    compat.RUN_DETOKENIZER_PROCESS: "detokenizer",
    compat.RUN_DP_CONTROLLER_PROCESS: "data-parallel controller",
}


def process_role() -> str:
    """Which SGLang process we are in, from the frame that loads plugins."""
    frames = {}
    frame = sys._getframe(1)
    while frame is not None:
        frames[(frame.f_globals.get("__name__"), frame.f_code.co_name)] = True
        frame = frame.f_back
    for symbol, role in _ROLE_BY_FUNCTION.items():
        if (symbol.module, symbol.qualname) in frames:
            return role
    return "main"


def setup_process() -> None:
    log = get_logger()
    role = process_role()
    platform = _setup_platform(role)
    disabled = _features_disabled(log)
    runtime = None
    if not disabled:
        runtime = _install_program_features(role, config.ThunderAgentConfig.from_env())
    if os.environ.get(debug_memcheck.ENV) == "1" and role == "scheduler":
        debug_memcheck.install(runtime)
    features = f"off ({config.DISABLE_ENV}=1, plain SGLang)" if disabled else "on"
    log.info(
        "ThunderAgent-SGLang %s plugin active in %s process (pid %d): "
        "program-aware features %s; platform support: %s",
        __version__,
        role,
        os.getpid(),
        features,
        platform,
    )


def _install_program_features(role: str, cfg: config.ThunderAgentConfig):
    """Our part of this process; in the scheduler, its one ``ProgramRuntime``."""
    if role == "main":
        from thunderagent_sglang.engine import program_http

        program_http.install(cfg)
    elif role == "scheduler":
        from thunderagent_sglang.engine import program_cache, sidecar_events
        from thunderagent_sglang.engine.runtime import ProgramRuntime

        runtime = ProgramRuntime(cfg, events_out=sidecar_events.make_sender(cfg))
        runtime.install()
        program_cache.install(runtime)
        return runtime
    return None


def _features_disabled(log) -> bool:
    """The disable switch; a wrong switch value or SGLang version also disables."""
    from thunderagent_sglang.patches import PatchError, check_sglang_version

    try:
        check_sglang_version()
        return config.program_features_disabled()
    except (config.ConfigError, PatchError) as exc:
        log.error("ThunderAgent: %s; running as plain SGLang", exc)
        return True


def _setup_platform(role: str) -> str:
    if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
        return "none needed (not the CPU engine)"
    kernel = cpu_platform.ensure_sgl_kernel()
    parts = [f"sgl_kernel {kernel}"]
    if role == "scheduler":
        cpu_platform.enable_hicache_on_cpu()
        parts.append("HiCache host tier on CPU")
    if role == "main":
        cpu_platform.refuse_gpu_only_routes()
        parts.append("memory-occupation routes refused (no GPU memory to release)")
    return ", ".join(parts)
