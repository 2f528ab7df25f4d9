"""Our radix-cache backend ``thunderagent``: SGLang's unified radix cache on the Python tree core.

Registered with SGLang's radix-cache registry (in the scheduler process, while
program-aware features are on) and selected with ``--radix-cache-backend
thunderagent``, which the launcher adds by default. It builds ``ProgramRadixCache``, a
``UnifiedRadixCache`` (the class that hosts HiCache) whose tree core is the
pure-Python one, chosen for this instance only: the Python core is the one
whose node life cycle and eviction ranking Python code can follow. No
behaviour differs from SGLang's yet; ``docs/design/program-cache.md`` is the
plan for program tags, residency counters and program-ordered eviction.

Only the scheduler process builds a tree cache, so ``install()`` runs there
(from ``register()``), before the scheduler starts.
"""

from __future__ import annotations

from sglang.srt.mem_cache.registry import (
    create_unified_radix_cache,
    default_radix_cache_factory,
    register_radix_cache_backend,
    registered_radix_cache_backends,
)
from sglang.srt.mem_cache.unified_cache.tree_core_registry import (
    register_tree_core_backend,
    registered_tree_core_backends,
)
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from thunderagent_sglang import compat
from thunderagent_sglang.config import ThunderAgentConfig
from thunderagent_sglang.engine import hooks, offload, program_scheduler, program_tree

from thunderagent_sglang.engine.logs import get_logger

BACKEND_NAME = "thunderagent"
TREE_CORE = program_tree.BACKEND_NAME  # SGLang's Python core, reporting KV changes
# Options whose own cache class SGLang's default selection would build; ours
# would silently drop them.
_OWN_CACHE_OPTIONS = ("enable_lmcache", "enable_flexkv", "enable_unified_cache_external_linker")


class ProgramRadixCache(UnifiedRadixCache):
    """SGLang's unified radix cache whose nodes know the programs passing through them."""

    def checkpoint_into_tree(self, req, *, up_to, **kwargs):
        result = super().checkpoint_into_tree(req, up_to=up_to, **kwargs)
        program = program_scheduler.table().program_for(req.rid)
        if program is not None and req.last_node is not None:
            finished = req.finished()
            head = program_tree.FINAL_HEAD if finished else req.rid
            program_tree.tag_path(self.tree_core, program.program_id, head, req.last_node)
            if finished:
                program_tree.RESIDENCY.drop_head(program.program_id, req.rid)
        return result


_config: list = [ThunderAgentConfig()]


def install(cfg: ThunderAgentConfig | None = None) -> None:
    """Register the backend and our tree core; idempotent. With ``cfg``, time prefill
    batches for the offload cost model."""
    if cfg is not None:
        _config[0] = cfg
        if cfg.offload != "off":
            hooks.install(compat.SCHEDULER_RUN_BATCH, offload.time_prefill, "around")
    if program_tree.BACKEND_NAME not in registered_tree_core_backends():
        register_tree_core_backend(program_tree.BACKEND_NAME, program_tree.tree_core_factory)
    if BACKEND_NAME not in registered_radix_cache_backends():
        register_radix_cache_backend(BACKEND_NAME, build_cache)


def build_cache(ctx):
    """The registry's factory: a ``ProgramRadixCache`` with HiCache if asked for.

    ``ctx`` is SGLang's ``TreeCacheBuildContext``. A disabled radix cache
    holds no tree, so SGLang's own selection builds it.
    """
    used = [name for name in _OWN_CACHE_OPTIONS if getattr(ctx.server_args, name, False)]
    if used:
        flags = ", ".join("--" + name.replace("_", "-") for name in used)
        raise ValueError(
            f"--radix-cache-backend {BACKEND_NAME} cannot be combined with {flags}: "
            f"drop {flags} or the --radix-cache-backend flag"
        )
    if ctx.disable_radix_cache:
        return default_radix_cache_factory(ctx)
    if ctx.params.tree_core_backend not in (None, TREE_CORE):
        get_logger().warning(
            "ThunderAgent: the %s cache backend uses the %s tree core, not %r",
            BACKEND_NAME, TREE_CORE, ctx.params.tree_core_backend,
        )
    # Per instance; SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND stays the default
    # for any other cache in the process.
    ctx.params.tree_core_backend = TREE_CORE
    cache = create_unified_radix_cache(ctx, cache_class=ProgramRadixCache)
    # Before the first eviction: SGLang binds get_priority on first use.
    core = cache.tree_core
    core.eviction_strategy = program_tree.ProgramEvictionStrategy(
        core.eviction_strategy, program_scheduler.eviction_key)
    offload.attach(cache, _config[0])
    return cache
