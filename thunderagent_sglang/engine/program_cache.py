"""Our radix-cache backend ``thunderagent``: SGLang's unified radix cache on our tree core.

Registered with SGLang's radix-cache and tree-core registries (in the scheduler process, while
program-aware features are on) and selected with ``--radix-cache-backend thunderagent``, which
the launcher adds by default. Its factory builds ``ProgramRadixCache``, a ``UnifiedRadixCache``
(the class that hosts HiCache) on ``ProgramTreeCore`` (SGLang's pure-Python core reporting KV
changes, chosen for this instance only), ranks eviction with ``ProgramEvictionStrategy``, and
hands the runtime to each: program tags on the path of every checkpointed call, residency
counters, program-ordered eviction and selective offload (docs/design/program-cache.md).

Only the scheduler process builds a tree cache, so ``install()`` runs there.
"""

from __future__ import annotations

import functools

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

from thunderagent_sglang import compat, config
from thunderagent_sglang.engine import hooks, program_tree
from thunderagent_sglang.engine.logs import get_logger

BACKEND_NAME = config.CACHE_BACKEND
TREE_CORE = config.CACHE_BACKEND  # SGLang's Python tree core, reporting KV changes
# Options whose own cache class SGLang's default selection would build; ours would silently
# drop them.
OWN_CACHE_OPTIONS = config.OWN_CACHE_OPTIONS


class ProgramRadixCache(UnifiedRadixCache):
    """SGLang's unified radix cache whose nodes know the programs passing through them."""

    runtime = None  # set by build_cache before the cache serves

    def checkpoint_into_tree(self, req, *, up_to, **kwargs):
        result = super().checkpoint_into_tree(req, up_to=up_to, **kwargs)
        program = self.runtime.table.program_for(req.rid)
        if program is not None and req.last_node is not None:
            finished = req.finished()
            head = program_tree.FINAL_HEAD if finished else req.rid
            self.tree_core.tag_path(program.program_id, head, req.last_node)
            if finished:
                self.runtime.residency.drop_head(program.program_id, req.rid)
        return result


def install(runtime) -> None:
    """Register the backend and our tree core, both bound to ``runtime``; time prefill
    batches for the offload cost model and the admission controller."""
    if runtime.cfg.offload != "off" or runtime.cfg.admission == "feedback":
        hooks.install(compat.SCHEDULER_RUN_BATCH, runtime.offload.time_prefill, "around")
    if TREE_CORE not in registered_tree_core_backends():
        register_tree_core_backend(TREE_CORE, functools.partial(program_tree.ProgramTreeCore,
                                                                runtime))
    if BACKEND_NAME not in registered_radix_cache_backends():
        register_radix_cache_backend(BACKEND_NAME, functools.partial(build_cache, runtime))


def build_cache(runtime, ctx):
    """The registry's factory: a ``ProgramRadixCache`` with HiCache if asked for.

    ``ctx`` is SGLang's ``TreeCacheBuildContext``. A disabled radix cache
    holds no tree, so SGLang's own selection builds it.
    """
    used = [name for name in OWN_CACHE_OPTIONS if getattr(ctx.server_args, name, False)]
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
    cache.runtime = runtime
    # Before the first eviction: SGLang binds get_priority on first use.
    core = cache.tree_core
    core.eviction_strategy = program_tree.ProgramEvictionStrategy(
        core.eviction_strategy, runtime, core)
    runtime.offload.attach(cache)
    return cache
