"""HiCache on a CPU (plain host allocation, pure-torch transfer) and the stand-in switch."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from thunderagent_sglang.engine import cpu_platform


def test_transfer_kv_direct_copies_the_given_rows_of_every_layer():
    device = [torch.arange(20, dtype=torch.float32).reshape(10, 1, 2) + 100 * i for i in range(2)]
    host = [torch.zeros(6, 1, 2) for _ in range(2)]
    cpu_platform.transfer_kv_direct(device, host, torch.tensor([7, 8, 3]),
                                    torch.tensor([0, 1, 5]), page_size=1)
    for layer in range(2):
        assert torch.equal(host[layer][[0, 1, 5]], device[layer][[7, 8, 3]])
        assert torch.equal(host[layer][2:5], torch.zeros(3, 1, 2))


def test_transfer_kv_direct_back_from_host_restores_the_rows():
    device = [torch.zeros(8, 2, 2)]
    host = [torch.randn(8, 2, 2)]
    cpu_platform.transfer_kv_direct(host, device, torch.tensor([4, 5, 6, 7]),
                                    torch.tensor([0, 1, 2, 3]), page_size=4)
    assert torch.equal(device[0][:4], host[0][4:])


def test_transfer_kv_direct_refuses_mismatched_layer_lists():
    with pytest.raises(ValueError, match="2 source layers but 1 destination"):
        cpu_platform.transfer_kv_direct([torch.zeros(1)] * 2, [torch.zeros(1)],
                                        torch.tensor([0]), torch.tensor([0]), 1)


def test_host_allocator_returns_plain_memory_of_the_asked_shape():
    buf = cpu_platform.alloc_host_plain((3, 4), torch.float16, "cpu", True, None)
    assert buf.shape == (3, 4) and buf.dtype == torch.float16
    assert not buf.is_pinned()


def test_standin_choice_from_the_environment_goes_first_on_the_path(monkeypatch):
    monkeypatch.setenv(cpu_platform.PROBE_ENV, "standin")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cpu_platform.ensure_sgl_kernel() == "standin"
    assert sys.path[0] == str(cpu_platform.STANDIN_DIR)
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(cpu_platform.STANDIN_DIR), "/elsewhere"])
    cpu_platform.ensure_sgl_kernel()  # idempotent
    assert sys.path.count(str(cpu_platform.STANDIN_DIR)) == 1


def test_native_choice_leaves_the_path_alone(monkeypatch):
    monkeypatch.setenv(cpu_platform.PROBE_ENV, "native")
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    assert cpu_platform.ensure_sgl_kernel() == "native"
    assert sys.path == before


def test_probe_finds_no_working_sgl_kernel_on_this_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("a GPU machine may have a working sgl_kernel")
    assert cpu_platform.native_sgl_kernel_works() is False


def test_a_host_pool_on_a_cpu_never_pins_whatever_its_constructor_was_given():
    class Pool:  # the shape of SGLang's HostKVCache: __init__ stores pin_memory
        def __init__(self, pin_memory=True):
            self.pin_memory = pin_memory

    Pool.pin_memory = cpu_platform.NEVER_PINNED
    pool = Pool(pin_memory=True)
    assert pool.pin_memory is False
    assert torch.zeros(4, pin_memory=pool.pin_memory).is_pinned() is False  # no CUDA needed
