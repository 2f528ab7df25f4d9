"""The pure-torch sgl_kernel stand-in: exact results of the ops it implements."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from thunderagent_sglang.engine.cpu_platform import STANDIN_DIR


@pytest.fixture(scope="module")
def standin():
    # Loaded under another name so this test process never shadows a real sgl_kernel.
    spec = importlib.util.spec_from_file_location(
        "standin_sgl_kernel", STANDIN_DIR / "sgl_kernel" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_assign_req_to_token_pool_writes_each_requests_slice(standin):
    req_to_token = torch.zeros((4, 8), dtype=torch.int32)
    # Request in row 2 gets positions 1..3, request in row 0 gets positions 0..1.
    standin.assign_req_to_token_pool_cpu(
        torch.tensor([2, 0]), req_to_token, torch.tensor([1, 0]), torch.tensor([4, 2]),
        torch.tensor([10, 11, 12, 20, 21], dtype=torch.int32), 8)
    expected = torch.zeros((4, 8), dtype=torch.int32)
    expected[2, 1:4] = torch.tensor([10, 11, 12], dtype=torch.int32)
    expected[0, 0:2] = torch.tensor([20, 21], dtype=torch.int32)
    assert torch.equal(req_to_token, expected)


def test_assign_with_an_empty_range_writes_nothing_and_keeps_offsets(standin):
    req_to_token = torch.zeros((2, 4), dtype=torch.int64)
    standin.assign_req_to_token_pool_cpu(
        torch.tensor([0, 1]), req_to_token, torch.tensor([2, 0]), torch.tensor([2, 2]),
        torch.tensor([7, 8]), 4)
    assert req_to_token.tolist() == [[0, 0, 0, 0], [7, 8, 0, 0]]


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer(standin):
    k = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    v = torch.arange(100, 112, dtype=torch.float32).reshape(6, 2)
    k_before, v_before = k.clone(), v.clone()
    ptrs = torch.tensor([k.data_ptr(), v.data_ptr()], dtype=torch.uint64)
    strides = torch.tensor([8, 8], dtype=torch.int64)  # 2 floats per row
    # Rows 0 and 1 swap: every source row is read before any is written.
    standin.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([5, 0, 1]),
                                        torch.tensor([1, 1, 0]))
    for after, before in ((k, k_before), (v, v_before)):
        assert torch.equal(after[5], before[1])
        assert torch.equal(after[0], before[1])
        assert torch.equal(after[1], before[0])
        assert torch.equal(after[2:5], before[2:5])


def test_any_other_op_imports_but_raises_naming_itself(standin):
    op = standin.fused_add_rmsnorm_cpu
    with pytest.raises(NotImplementedError, match="sgl_kernel op 'fused_add_rmsnorm_cpu'"):
        op(torch.zeros(1))


def test_dunder_lookups_stay_attribute_errors(standin):
    assert not hasattr(standin, "__path_hooks__")
