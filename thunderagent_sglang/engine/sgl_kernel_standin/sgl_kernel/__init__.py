"""Pure-torch stand-in for the ``sgl_kernel`` CPU ops SGLang's CPU engine calls.

SGLang 0.5.23's CPU engine imports ``*_cpu`` ops from ``sgl_kernel`` at module
import time. The PyPI ``sglang-kernel`` wheel is CUDA-only, and the real CPU
build (AVX-512/AMX) ships no wheel, so on an ordinary CPU the import fails.
On such a CPU every layer of a dense model takes its ``forward_native`` path,
and only the ops below are actually called. ThunderAgent-SGLang puts this
package first on the import path of the server processes only when no working
``sgl_kernel`` is importable (see ``thunderagent_sglang.engine.cpu_platform``).

Any other name can be imported (SGLang imports some at module level) but
raises ``NotImplementedError`` naming the op when called.
"""

from __future__ import annotations

import ctypes

import torch

THUNDERAGENT_STANDIN = True


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """req_to_token[row_i, start_i:end_i] = the i-th slice of out_cache_loc.

    The slices of ``out_cache_loc`` are consecutive, in request order.
    """
    del pool_len  # rows of req_to_token already have this length
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    offset = 0
    for row, start, end in zip(rows, starts, ends):
        length = end - start
        if length > 0:
            req_to_token[row, start:end] = out_cache_loc[offset : offset + length]
        offset += length


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every buffer b: row tgt_loc[j] of b = row src_loc[j] of b.

    ``data_ptrs[b]`` is the base address of buffer b and ``strides[b]`` its
    row size in bytes (the layout the Triton kernel of the GPU path reads).
    """
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        # Read every source row before writing, as the GPU kernel does.
        rows = [ctypes.string_at(base + src * stride, stride) for _, src in pairs]
        for (tgt, _), row in zip(pairs, rows):
            ctypes.memmove(base + tgt * stride, row, stride)


def _not_implemented(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel op '{name}' is not implemented by ThunderAgent-SGLang's "
            "CPU stand-in (only the ops a dense model's CPU path calls are). "
            "Install a native sgl-kernel CPU build (AVX-512/AMX) or run on a GPU "
            "to use the SGLang feature that needs it."
        )

    op.__name__ = name
    op.__qualname__ = name
    return op


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _not_implemented(name)
