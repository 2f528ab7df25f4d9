"""CPU platform support: what SGLang 0.5.23 needs to serve, and to run HiCache, on a CPU.

Two parts, both kept on under ``THUNDERAGENT_DISABLE=1`` (they are platform
support, not program-aware behaviour):

* the ``sgl_kernel`` stand-in (``sgl_kernel_standin/``), put first on the import
  path of the server processes when no working ``sgl_kernel`` imports;
* HiCache's host tier on a CPU: a plain (unpinned) host allocator and a
  pure-torch ``transfer_kv_direct``, installed in the scheduler process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

STANDIN_DIR = Path(__file__).with_name("sgl_kernel_standin")
# Set by the first process that probes, read by the processes it starts.
PROBE_ENV = "THUNDERAGENT_SGL_KERNEL"  # "native" | "standin"

_PROBE = (
    "import sgl_kernel, sys; "
    "sys.exit(3 if getattr(sgl_kernel, 'THUNDERAGENT_STANDIN', False) else 0)"
)


def native_sgl_kernel_works() -> bool:
    """Whether a real ``sgl_kernel`` imports here (probed in a fresh interpreter).

    A subprocess keeps a failed import (the CUDA-only wheel on a machine with
    no driver) from leaving half-initialised modules in this process.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = _without_standin(env.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode == 0


def ensure_sgl_kernel() -> str:
    """Put the stand-in in place for this process and its children if needed.

    Returns "native" or "standin". Idempotent; the first probe's answer is
    passed to child processes through the environment.
    """
    choice = os.environ.get(PROBE_ENV)
    if choice not in ("native", "standin"):
        choice = "native" if native_sgl_kernel_works() else "standin"
        os.environ[PROBE_ENV] = choice
        if choice == "standin":
            logger.info(
                "ThunderAgent: no working sgl_kernel build is importable here; "
                "using the pure-torch CPU stand-in (%s)",
                STANDIN_DIR,
            )
    if choice == "standin":
        _put_standin_first()
    return choice


def _put_standin_first() -> None:
    path = str(STANDIN_DIR)
    if "sgl_kernel" in sys.modules and not getattr(
        sys.modules["sgl_kernel"], "THUNDERAGENT_STANDIN", False
    ):
        raise RuntimeError(
            "ThunderAgent: a non-working sgl_kernel was imported before the CPU "
            "stand-in could be put in place; start the server with "
            "`python -m thunderagent_sglang.launch_server`"
        )
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def _without_standin(pythonpath: str) -> str:
    keep = [p for p in pythonpath.split(os.pathsep) if p and p != str(STANDIN_DIR)]
    return os.pathsep.join(keep)


def alloc_host_plain(
    dims: tuple,
    dtype,
    device: str,
    pin_memory: bool,
    allocator: None,
    registration_granularity_bytes: int | None = None,
):
    """Host-tier allocator for a CPU: plain memory (pinning needs a CUDA driver)."""
    import torch

    del pin_memory, allocator, registration_granularity_bytes
    return torch.empty(dims, dtype=dtype, device=device)


def transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size):
    """Copy KV rows ``src_indices`` of every layer to rows ``dst_indices``.

    Same contract as ``sgl_kernel.kvcacheio.transfer_kv_direct``; indices are
    token slots, whole pages at a time, so ``page_size`` needs no special case.
    """
    del page_size
    if len(src_layers) != len(dst_layers):
        raise ValueError(
            f"transfer_kv_direct: {len(src_layers)} source layers but "
            f"{len(dst_layers)} destination layers"
        )
    src_idx = src_indices.to(device="cpu", dtype=_index_dtype())
    dst_idx = dst_indices.to(device="cpu", dtype=_index_dtype())
    for src, dst in zip(src_layers, dst_layers):
        dst.index_copy_(0, dst_idx.to(dst.device), src.index_select(0, src_idx.to(src.device)))


def _index_dtype():
    import torch

    return torch.int64


def enable_hicache_on_cpu() -> None:
    """Make SGLang's host KV tier work on a CPU (scheduler process only)."""
    from thunderagent_sglang import compat

    funcs = compat.resolve(compat.HICACHE_ALLOC_MEMORY_FUNCS)
    funcs["cpu"] = alloc_host_plain
    mha = compat.import_module(compat.HICACHE_MHA_HOST_MODULE)
    if getattr(mha, "transfer_kv_direct", None) is None:
        mha.transfer_kv_direct = transfer_kv_direct
    # pinning needs a CUDA driver: every host pool reads pin_memory False (its staging pages
    # for a storage backend, --hicache-storage-backend, are then plain memory too)
    compat.resolve(compat.HICACHE_HOST_POOL_BASE).pin_memory = NEVER_PINNED


NEVER_PINNED = property(lambda pool: False, lambda pool, value: None,
                        doc="a CPU host pool: never pinned (set by the pool's __init__, ignored)")


# SGLang's memory-occupation routes release and restore device memory through its torch memory
# saver and CUDA calls: on the CPU engine the scheduler dies of "Found no NVIDIA driver".
GPU_ONLY_ROUTES = ("/release_memory_occupation", "/resume_memory_occupation")
GPU_ONLY_MESSAGE = ("{path} releases or restores GPU memory (SGLang's torch memory saver); this "
                    "server runs the CPU engine, which has none to release. Serve on a GPU to "
                    "use it; /flush_cache, /pause_generation and the weight updates work here.")


class GpuOnlyRoutes:
    """Pure ASGI: the memory-occupation routes answer 400 on the CPU engine instead of
    taking the scheduler down."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in GPU_ONLY_ROUTES:
            from fastapi.responses import JSONResponse

            response = JSONResponse(status_code=400, content={
                "error": GPU_ONLY_MESSAGE.format(path=scope["path"])})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def refuse_gpu_only_routes() -> None:
    from sglang.srt.entrypoints.http_server import app

    app.add_middleware(GpuOnlyRoutes)
