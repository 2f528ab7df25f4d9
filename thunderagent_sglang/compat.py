"""Every SGLang symbol we touch, checked against the pinned version.

Each entry names a module-level or class-level object as ``"module:qualname"``
and, for callables, the signature we were written against. ``tests/unit/
test_compat.py`` imports each one and compares signatures, and a syntax-tree
test fails when code outside ``thunderagent_sglang/engine/`` (and this file)
imports ``sglang``, or names a hook target not listed here. An SGLang upgrade
therefore fails in this one place.

Import this module cheaply: it resolves nothing until asked.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

from thunderagent_sglang import PINNED_SGLANG_VERSION


@dataclasses.dataclass(frozen=True)
class Symbol:
    path: str  # "module:qualname", or "module" for a module
    why: str  # what we use it for
    signature: str | None = None  # str(inspect.signature(obj)); None = not checked

    @property
    def module(self) -> str:
        return self.path.split(":", 1)[0]

    @property
    def qualname(self) -> str | None:
        return self.path.split(":", 1)[1] if ":" in self.path else None

    @property
    def dotted(self) -> str:
        """The dotted form HookRegistry takes as a target."""
        return self.path.replace(":", ".")


# --- launcher -------------------------------------------------------------
PREPARE_SERVER_ARGS = Symbol(
    "sglang.srt.server_args:prepare_server_args",
    "parse SGLang's own flags exactly as sglang.launch_server does",
    "(argv: 'list[str]') -> 'ServerArgs'",
)
SERVER_ARGS_ADD_CLI_ARGS = Symbol(
    "sglang.srt.server_args:ServerArgs.add_cli_args",
    "SGLang's flags in our --help",
    "(parser: 'argparse.ArgumentParser')",
)
RUN_SERVER = Symbol(
    "sglang.launch_server:run_server",
    "start the server exactly as sglang.launch_server does",
    "(server_args)",
)
LOAD_PLUGINS = Symbol(
    "sglang.srt.plugins:load_plugins",
    "load plugins in the launcher process, as sglang.launch_server does",
    "()",
)
KILL_PROCESS_TREE = Symbol(
    "sglang.srt.utils:kill_process_tree",
    "stop the server's subprocesses when the launcher exits",
    "(parent_pid, include_parent: 'bool' = True, skip_pid: 'int' = None, "
    "wait_timeout: 'Optional[float]' = 60)",
)

# --- process roles (register() names the process it runs in) ---------------
RUN_SCHEDULER_PROCESS = Symbol(
    "sglang.srt.managers.scheduler:run_scheduler_process",
    "calls load_plugins() in the scheduler subprocess; its frame names the role",
)
RUN_DETOKENIZER_PROCESS = Symbol(
    "sglang.srt.managers.detokenizer_manager:run_detokenizer_process",
    "calls load_plugins() in the detokenizer subprocess; its frame names the role",
)
RUN_DP_CONTROLLER_PROCESS = Symbol(
    "sglang.srt.managers.data_parallel_controller:run_data_parallel_controller_process",
    "calls load_plugins() in the data-parallel controller; its frame names the role",
)

# --- CPU platform support --------------------------------------------------
HICACHE_ALLOC_MEMORY_FUNCS = Symbol(
    "sglang.srt.mem_cache.pool_host.common:ALLOC_MEMORY_FUNCS",
    "host-tier allocator by device type; the default pins memory through CUDA",
)
HICACHE_MHA_HOST_MODULE = Symbol(
    "sglang.srt.mem_cache.pool_host.mha",
    "its global transfer_kv_direct is bound only on CUDA/ROCm/XPU; we bind a "
    "pure-torch one on CPU",
)
HICACHE_MHA_HOST_POOL = Symbol(
    "sglang.srt.mem_cache.pool_host.mha:MHATokenToKVPoolHost",
    "the host KV pool whose 'direct' io backend calls transfer_kv_direct",
)
HICACHE_HOST_POOL_BASE = Symbol(
    "sglang.srt.mem_cache.pool_host.base:HostKVCache",
    "host pools keep pin_memory (default True) and pin the storage tier's staging pages "
    "with it, which needs a CUDA driver; on a CPU it reads False",
)

# --- debugging -------------------------------------------------------------
CHECK_ALL_POOLS = Symbol(
    "sglang.srt.managers.scheduler_components.invariant_checker:"
    "SchedulerInvariantChecker._check_all_pools",
    "SGLang's idle KV-leak check; THUNDERAGENT_DEBUG_MEMCHECK=1 logs its result",
    "(self, ps: 'PoolStats', uncached: 'int' = 0) -> 'Tuple[bool, List[str]]'",
)
HOOK_REGISTRY = Symbol(
    "sglang.srt.plugins.hook_registry:HookRegistry.register",
    "how every hook of ours is installed",
)
HOOK_TYPE = Symbol(
    "sglang.srt.plugins.hook_registry:HookType",
    "BEFORE/AFTER/AROUND/REPLACE",
)

# --- programs: identity plumbing, lifecycle hooks, control IPC --------------
HTTP_APP = Symbol(
    "sglang.srt.entrypoints.http_server:app",
    "the FastAPI app: our identity middleware and /programs routes are added to it",
)
HTTP_AUTH_LEVEL = Symbol(
    "sglang.srt.utils.auth:auth_level",
    "marks the operator routes (pause, resume, release by path) ADMIN_OPTIONAL: SGLang's "
    "--admin-api-key when one is set",
    "(level: 'AuthLevel')",
)
HTTP_AUTH_LEVELS = Symbol(
    "sglang.srt.utils.auth:AuthLevel",
    "NORMAL/ADMIN_OPTIONAL/ADMIN_FORCE",
)
RWLOCK_ACQUIRE_WRITER = Symbol(
    "sglang.srt.utils.aio_rwlock:RWLock.acquire_writer",
    "a weight update (or LoRA unload) waits here for every call in flight, held calls "
    "included: we let held calls go first and hold none until the writer is done",
    "(self)",
)
RWLOCK_RELEASE_WRITER = Symbol(
    "sglang.srt.utils.aio_rwlock:RWLock.release_writer",
    "the writer is done: calls may be held again",
    "(self)",
)
WEIGHTS_RELEASE_MEMORY = Symbol(
    "sglang.srt.managers.scheduler_components.weight_updater:"
    "SchedulerWeightUpdaterManager.release_memory_occupation",
    "the engine's memory is released (RL): held calls stay held until it is resumed",
    "(self, recv_req: 'ReleaseMemoryOccupationReqInput')",
)
WEIGHTS_RESUME_MEMORY = Symbol(
    "sglang.srt.managers.scheduler_components.weight_updater:"
    "SchedulerWeightUpdaterManager.resume_memory_occupation",
    "the engine's memory is back: held calls of active programs go, the scheduler decides",
    "(self, recv_req: 'ResumeMemoryOccupationReqInput')",
)
HTTP_GLOBAL_STATE = Symbol(
    "sglang.srt.entrypoints.http_server:get_global_state",
    "reaches the TokenizerManager from our routes",
    "() -> sglang.srt.entrypoints.http_server._GlobalState",
)
TOKENIZER_GENERATE_REQUEST = Symbol(
    "sglang.srt.managers.tokenizer_manager:TokenizerManager.generate_request",
    "every /generate and OpenAI call passes here with its GenerateReqInput and "
    "HTTP request: the program id goes into sampling_params.custom_params",
    "(self, obj: 'Union[GenerateReqInput, EmbeddingReqInput]', "
    "request: 'Optional[fastapi.Request]' = None)",
)
TOKENIZER_INIT_COMMUNICATORS = Symbol(
    "sglang.srt.managers.tokenizer_control_mixin:TokenizerControlMixin.init_communicators",
    "where the TokenizerManager builds its control communicators; we add ours",
    "(self: 'TokenizerManager')",
)
FAN_OUT_COMMUNICATOR = Symbol(
    "sglang.srt.managers.communicator:FanOutCommunicator",
    "request/response to every scheduler over SGLang's IPC",
)
IO_BASE_REQ = Symbol(
    "sglang.srt.managers.io_struct:BaseReq",
    "base of our IPC message types",
)
IO_HOOK_CUSTOM_TYPES = Symbol(
    "sglang.srt.managers.io_struct:hook_custom_types",
    "lets SGLang's msgpack IPC decode our message types",
    "(*new_types: 'Type')",
)
TYPE_BASED_DISPATCHER = Symbol(
    "sglang.utils:TypeBasedDispatcher",
    "the dispatch tables we extend with our message types",
)
SCHEDULER_INIT_REQUEST_DISPATCHER = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.init_request_dispatcher",
    "where the scheduler builds its dispatch table; we add our control requests",
    "(self)",
)
SCHEDULER_HANDLE_GENERATE_REQUEST = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.handle_generate_request",
    "a request arrives in the scheduler: held while its program is paused, else its program "
    "becomes reasoning (an AROUND hook)",
    "(self, recv_req: sglang.srt.managers.io_struct.TokenizedGenerateReqInput, *, "
    "mm_input_error: Optional[str] = None)",
)
SCHEDULER_ABORT_REQUEST = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.abort_request",
    "an abort (client gone, or abort_all): held calls it names are handed to SGLang first",
    "(self, recv_req: sglang.srt.managers.io_struct.AbortReq)",
)
SCHEDULER_SEND_ABORT_OUTPUT = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.send_abort_output",
    "a request ends outside the output stream (aborted while queued)",
    "(self, abort_req: sglang.srt.managers.io_struct.AbortReq, "
    "req: sglang.srt.managers.schedule_batch.Req) -> None",
)
SCHEDULER_PROCESS_INPUT_REQUESTS = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.process_input_requests",
    "runs once per scheduler loop iteration: our periodic tick (idle expiry)",
    "(self, recv_reqs: List)",
)
OUTPUT_STREAMER_STREAM_OUTPUT = Symbol(
    "sglang.srt.managers.scheduler_components.output_streamer:"
    "SchedulerOutputStreamer.stream_output",
    "every request's final output passes here: its program may become acting",
    "(self, reqs: 'List[Req]', return_logprob: 'bool', skip_req: 'Optional[Req]' = None)",
)

# --- the program-aware cache backend ------------------------------------------
REGISTER_RADIX_CACHE_BACKEND = Symbol(
    "sglang.srt.mem_cache.registry:register_radix_cache_backend",
    "registers our radix-cache backend 'thunderagent' (--radix-cache-backend)",
    "(name: 'str', factory: 'RadixCacheFactory') -> 'None'",
)
REGISTERED_RADIX_CACHE_BACKENDS = Symbol(
    "sglang.srt.mem_cache.registry:registered_radix_cache_backends",
    "install() registers once: a second registration of a name raises",
    "() -> 'list[str]'",
)
CREATE_UNIFIED_RADIX_CACHE = Symbol(
    "sglang.srt.mem_cache.registry:create_unified_radix_cache",
    "builds our UnifiedRadixCache subclass with SGLang's components and HiCache wiring",
    "(ctx: 'TreeCacheBuildContext', *, cache_class: 'type[UnifiedRadixCache] | None' = None)"
    " -> 'BasePrefixCache'",
)
DEFAULT_RADIX_CACHE_FACTORY = Symbol(
    "sglang.srt.mem_cache.registry:default_radix_cache_factory",
    "SGLang's own cache when the radix cache is disabled",
    "(ctx: 'TreeCacheBuildContext') -> 'BasePrefixCache'",
)
TREE_CACHE_BUILD_CONTEXT = Symbol(
    "sglang.srt.mem_cache.registry:TreeCacheBuildContext",
    "what our factory is given (server_args, params, disable_radix_cache)",
    "(server_args: 'ServerArgs', params: 'CacheInitParams', is_hybrid_swa: 'bool', "
    "is_hybrid_ssm: 'bool', enable_hierarchical_cache: 'bool', disable_radix_cache: 'bool', "
    "tp_worker: 'Any', model_config: 'ModelConfig', tp_size: 'int', tp_rank: 'int', "
    "tp_group: 'Any', full_tokens_per_layer: 'Optional[int]' = None, is_dsa: 'bool' = False)"
    " -> None",
)
UNIFIED_RADIX_CACHE = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache",
    "base class of our ProgramRadixCache (the cache class that hosts HiCache)",
    "(params: 'CacheInitParams')",
)
CACHE_INIT_PARAMS_TREE_CORE_BACKEND = Symbol(
    "sglang.srt.mem_cache.cache_init_params:CacheInitParams.tree_core_backend",
    "per-instance tree core choice: our cache uses the Python tree core",
)
UNIFIED_TREE_CORE = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore",
    "base of ProgramTreeCore; the methods below are overridden to report KV changes",
    "(params: 'CacheInitParams', components: 'dict[ComponentType, TreeComponent]')",
)
REGISTER_TREE_CORE_BACKEND = Symbol(
    "sglang.srt.mem_cache.unified_cache.tree_core_registry:register_tree_core_backend",
    "registers ProgramTreeCore as the tree core 'thunderagent'",
    "(name: 'str', factory: 'TreeCoreFactory') -> 'None'",
)
REGISTERED_TREE_CORE_BACKENDS = Symbol(
    "sglang.srt.mem_cache.unified_cache.tree_core_registry:registered_tree_core_backends",
    "install() registers once",
    "() -> 'list[str]'",
)
COMPONENT_TYPE = Symbol(
    "sglang.srt.mem_cache.unified_cache.component_type:ComponentType",
    "FULL: the KV component whose device/host lengths we count",
)
CORE_SPLIT_NODE = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore._split_node",
    "a node splits: the new parent inherits the child's program tags",
    "(self, key: 'RadixKey', child: 'UnifiedTreeNode', split_len: 'int') -> "
    "'tuple[UnifiedTreeNode, Optional[CacheAction | ComponentAction]]'",
)
CORE_EVICT_COMPONENT = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:"
    "UnifiedTreeCore._evict_component_and_detach_lru",
    "the one funnel of device/host KV release; returns the tokens freed per tier",
    "(self, node: 'UnifiedTreeNode', comp: 'TreeComponent', device_frees: "
    "'dict[ComponentType, list[torch.Tensor]]', host_frees: "
    "'dict[ComponentType, list[torch.Tensor]]', cache_actions: "
    "'list[CacheAction | ComponentAction]', target: 'EvictLayer' = <EvictLayer.DEVICE: 1>, "
    "tracker: 'Optional[dict[ComponentType, int]]' = None) -> 'tuple[int, int]'",
)
CORE_COMMIT_BACKUP = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.commit_backup",
    "a node gets host KV (write-through backup)",
    "(self, node_id: 'NodeId', host_indices: 'torch.Tensor', comp_xfers: "
    "'dict[ComponentType, list[PoolTransfer]]') -> 'None'",
)
CORE_COMMIT_LOAD_BACK = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.commit_load_back",
    "nodes get device KV back from the host tier",
    "(self, node_id: 'NodeId', device_indices: 'torch.Tensor', kv_xfer: 'PoolTransfer', "
    "comp_xfers: 'dict[ComponentType, list[PoolTransfer]]') -> "
    "'list[CacheAction | ComponentAction]'",
)
CORE_UNEVICT_ON_INSERT = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore._unevict_node_on_insert",
    "an evicted node gets device KV back from a request's fresh KV",
    "(self, node: 'UnifiedTreeNode', fresh_value: 'torch.Tensor', session_id: "
    "'Optional[str]' = None) -> 'None'",
)
CORE_INSERT_HOST = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.insert_host",
    "host KV inserted along a path (storage prefetch)",
    "(self, node_id: 'NodeId', key: 'RadixKey', host_value: 'torch.Tensor', "
    "hash_value: 'list[str]') -> 'InsertResult'",
)
CORE_REMOVE_LEAF = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore._remove_leaf_from_parent",
    "a node leaves the tree",
    "(self, node: 'UnifiedTreeNode')",
)
CORE_RESET = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.reset",
    "the whole tree is dropped (flush_cache)",
    "(self) -> 'None'",
)
CORE_EVICT_DEVICE_START = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.evict_device_start",
    "a device eviction walk starts: each program's rank is computed once until it ends",
    "(self, component_type: 'ComponentType', request_cnt: 'int') -> 'None'",
)
CORE_EVICT_DEVICE_END = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.evict_device_end",
    "the device eviction walk ends (called in a finally by SGLang's walk)",
    "(self, component_type: 'ComponentType') -> 'None'",
)
CORE_DRIVE_HOST_EVICTION = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.drive_host_eviction",
    "a host eviction walk: ranked with each program's rank computed once",
    "(self, component_type: 'ComponentType', num_tokens: 'int') -> "
    "'DriveHostEvictionResult'",
)
CORE_NODE_BY_ID = Symbol(
    "sglang.srt.mem_cache.unified_cache.unified_tree_core:UnifiedTreeCore.node_by_id",
    "node ids (req.last_node, heads) back to nodes",
    "(self, node_id: 'NodeId') -> 'UnifiedTreeNode'",
)
CACHE_CHECKPOINT_INTO_TREE = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.checkpoint_into_tree",
    "a request's sequence is inserted; req.last_node ends its path: we tag it",
    "(self, req: 'Req', *, up_to: 'int', **kwargs) -> 'None'",
)

CACHE_EVICT = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.evict",
    "offload/drop a paused program: an eviction walk with its nodes ranked first",
    "(self, params: 'EvictParams') -> 'EvictResult'",
)
CACHE_EVICT_HOST = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.evict_host",
    "drop a paused program's host copies (its nodes ranked first)",
    "(self, num_tokens: 'int', component_type: 'ComponentType' = <ComponentType.FULL: 0>) -> 'int'",
)
CACHE_LOAD_BACK = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.load_back",
    "prefetch: a resumed program's offloaded KV back to the device",
    "(self, node_id: 'NodeId', mem_quota: 'Optional[int]' = None, req=None) -> 'bool'",
)
CACHE_START_LOADING = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.ready_to_load_host_cache",
    "prefetch: start the queued host-to-device loads now (SGLang starts them only when its "
    "next prefill batch forms); its ack is the last of cache_controller.ack_load_queue",
    "(self) -> 'int'",
)
CACHE_LOADING_CHECK = Symbol(
    "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.loading_check",
    "prefetch: once the started load is done, release the locks it held",
    "(self, finish_count: 'Optional[int]' = None) -> 'None'",
)
EVICT_PARAMS = Symbol(
    "sglang.srt.mem_cache.base_prefix_cache:EvictParams",
    "the argument of UnifiedRadixCache.evict",
)
POOL_NAME = Symbol(
    "sglang.srt.mem_cache.hicache_storage:PoolName",
    "PoolName.KV: the host KV pool in cache.host_pool_group (free host tokens)",
)
KV_POOL_SIZE_BYTES = Symbol(
    "sglang.srt.mem_cache.memory_pool:MHATokenToKVPool.get_kv_size_bytes",
    "KV bytes per token for the offload cost model (over k_buffer[0] rows)",
    "(self)",
)
SCHEDULER_RUN_BATCH = Symbol(
    "sglang.srt.managers.scheduler:Scheduler.run_batch",
    "prefill batches are timed here (the recompute rate of the offload cost model), and the "
    "start of every batch noted (decode steps' times for --thunderagent-decay auto)",
    "(self, batch: sglang.srt.managers.schedule_batch.ScheduleBatch, pp_proxy_tensors: "
    "Optional[sglang.srt.model_executor.forward_batch_info.PPProxyTensors] = None) -> "
    "Union[sglang.srt.managers.utils.GenerationBatchResult, "
    "sglang.srt.managers.utils.EmbeddingBatchResult]",
)

# --- tensor parallelism: one decision on every rank --------------------------
REQUEST_RECEIVER_RECV = Symbol(
    "sglang.srt.managers.scheduler_components.request_receiver:"
    "SchedulerRequestReceiver.recv_requests",
    "tensor parallelism: rank 0's step inputs (its clock, its offload measures) ride this "
    "per-step broadcast of received requests as a local request, and are taken out after it",
    "(self, local_reqs: 'Optional[List[AbortReq]]' = None) -> "
    "'List[Union[TokenizedGenerateReqInput, TokenizedEmbeddingReqInput, Any]]'",
)
GET_PARALLEL = Symbol(
    "sglang.srt.runtime_context:get_parallel",
    "the scheduler's tensor-parallel rank and size (.tp_rank, .tp_size)",
    "() -> 'ParallelContext'",
)

# --- scheduler: decode retraction order, shutdown of held calls -------------
DECODE_RETRACTION_ORDER = Symbol(
    "sglang.srt.managers.schedule_batch:ScheduleBatch._get_decode_retraction_order",
    "decode retraction: programs marked for pause first, then the smallest program "
    "(indices most-preferred-to-keep first; SGLang pops from the end)",
    "(reqs: 'List[Req]') -> 'List[int]'",
)
ADD_API_KEY_MIDDLEWARE = Symbol(
    "sglang.srt.utils.auth:add_api_key_middleware",
    "the live view's page is served outside SGLang's API-key check (its data routes are not)",
    "(app, *, api_key: 'Optional[str]', admin_api_key: 'Optional[str]')",
)
SIGTERM_HANDLER = Symbol(
    "sglang.srt.managers.tokenizer_manager:SignalHandler.sigterm_handler",
    "SIGTERM starts SGLang's drain: held calls are answered 503 at once, not waited for",
    "(self, signum=None, frame=None)",
)
ABORT_REQ = Symbol(
    "sglang.srt.managers.io_struct:AbortReq",
    "the abort that answers held calls with 503 on shutdown (SGLang's own abort path)",
)
FINISH_ABORT = Symbol(
    "sglang.srt.managers.schedule_batch:FINISH_ABORT",
    "its to_json() is the finished_reason carrying the 503 status of a shutdown",
    "(message=None, status_code=None, err_type=None)",
)

# Instance attributes we read or set (not importable, so not signature-checked;
# the integration tests exercise each): UnifiedTreeCore.eviction_strategy (our
# ProgramEvictionStrategy replaces it before the first eviction), .root_node;
# UnifiedTreeNode.id, .parent, .component_data[ComponentType.FULL].value /
# .host_value; TreeComponent.component_type; PoolTransfer.nodes_to_load;
# InsertResult.inserted_host_node; Req.rid, .last_node, .origin_input_ids,
# .output_ids, .cached_tokens, .finished(); Scheduler.page_size, ._request_dispatcher;
# UnifiedRadixCache.cache_controller, .host_pool_group.get_pool(), .token_to_kv_pool_allocator
# .get_kvcache() (.device, .layer_num, .k_buffer); ScheduleBatch.extend_num_tokens,
# .forward_mode.is_extend(), .forward_mode.is_decode(), .batch_size();
# Scheduler.max_total_num_tokens; TokenizedGenerateReqInput.rid,
# .input_ids, .sampling_params.max_new_tokens; AbortReq.rid, .abort_all;
# TokenizerManager._dispatch_to_scheduler, ._result_dispatcher.

SYMBOLS: tuple[Symbol, ...] = tuple(
    v for v in list(globals().values()) if isinstance(v, Symbol)
)

# Symbols given to SGLang's HookRegistry as targets; engine.hooks refuses others.
HOOK_TARGETS: tuple[Symbol, ...] = (
    CHECK_ALL_POOLS,
    TOKENIZER_GENERATE_REQUEST,
    TOKENIZER_INIT_COMMUNICATORS,
    SCHEDULER_INIT_REQUEST_DISPATCHER,
    SCHEDULER_HANDLE_GENERATE_REQUEST,
    SCHEDULER_SEND_ABORT_OUTPUT,
    SCHEDULER_ABORT_REQUEST,
    SCHEDULER_PROCESS_INPUT_REQUESTS,
    OUTPUT_STREAMER_STREAM_OUTPUT,
    SCHEDULER_RUN_BATCH,
    REQUEST_RECEIVER_RECV,
    DECODE_RETRACTION_ORDER,
    SIGTERM_HANDLER,
    ADD_API_KEY_MIDDLEWARE,
    RWLOCK_ACQUIRE_WRITER,
    RWLOCK_RELEASE_WRITER,
    WEIGHTS_RELEASE_MEMORY,
    WEIGHTS_RESUME_MEMORY,
)


def import_module(symbol: Symbol):
    return importlib.import_module(symbol.module)


def resolve(symbol: Symbol):
    """The live object a symbol names."""
    obj = import_module(symbol)
    for part in (symbol.qualname or "").split(".") if symbol.qualname else ():
        obj = getattr(obj, part)
    return obj


def problem(symbol: Symbol) -> str | None:
    """Why ``symbol`` does not match the installed SGLang, or None."""
    try:
        obj = resolve(symbol)
    except (ImportError, AttributeError) as exc:
        return f"{symbol.path}: missing ({exc})"
    if symbol.signature is None:
        return None
    try:
        actual = str(inspect.signature(obj))
    except (TypeError, ValueError) as exc:
        return f"{symbol.path}: no signature ({exc})"
    if actual != symbol.signature:
        return f"{symbol.path}: signature is {actual}, expected {symbol.signature}"
    return None


def problems() -> list[str]:
    """Every mismatch against the installed SGLang (imports all listed modules)."""
    return [p for p in (problem(s) for s in SYMBOLS) if p is not None]


if __name__ == "__main__":  # python -m thunderagent_sglang.compat
    found = problems()
    for line in found:
        print(line)
    print(
        f"{len(SYMBOLS)} symbols checked against SGLang {PINNED_SGLANG_VERSION}: "
        f"{len(found)} problem(s)"
    )
    raise SystemExit(1 if found else 0)
