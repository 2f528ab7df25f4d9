"""Which SGLang features work with our layer, and which are refused at launch.

Pure data and one check, no SGLang import. The README's feature table lists
the same rows (a test keeps them in step). A refusal applies only while
program-aware features are on: ``THUNDERAGENT_DISABLE=1`` serves plain SGLang
with any flag SGLang accepts.
"""

from __future__ import annotations

import dataclasses

from thunderagent_sglang import config, launch_args


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    flags: tuple[str, ...]  # the SGLang flags that turn it on
    status: str  # "tested" | "untested" | "refused"
    note: str
    refused_unless: str | None = None  # for "refused": the value that is fine


FEATURES: tuple[Feature, ...] = (
    Feature("Radix prefix cache (default)", (), "tested",
            "Ours by default: --radix-cache-backend thunderagent (SGLang's unified radix "
            "cache on its Python tree core); another --radix-cache-backend is kept."),
    Feature("Page size > 1", ("--page-size",), "tested",
            "CI serves with --page-size 16 (with HiCache)."),
    Feature("Chunked prefill", ("--chunked-prefill-size",), "tested",
            "CI serves with --chunked-prefill-size 64."),
    Feature("HiCache host KV tier", ("--enable-hierarchical-cache",), "tested",
            "On a CPU with --hicache-io-backend direct --hicache-mem-layout "
            "layer_first (our pure-torch transfer)."),
    Feature("HiCache storage tier (file backend)", ("--hicache-storage-backend",), "tested",
            "--hicache-storage-backend file on a directory (SGLANG_HICACHE_FILE_BACKEND_"
            "STORAGE_DIR) two replicas share: CI's router replicas; a program moved to the "
            "other replica loads the KV it computed from storage. Other backends untested."),
    Feature("OpenAI chat/completions, native /generate, streaming", (), "tested",
            "All answer on the demo model in CI."),
    Feature("Speculative decoding", ("--speculative-algorithm",), "untested",
            "Passes through to SGLang; not covered by our CI (needs a draft "
            "model; its CPU ops are not in our sgl_kernel stand-in)."),
    Feature("LoRA adapters", ("--enable-lora", "--lora-paths"), "untested",
            "Passes through to SGLang; not covered by our CI."),
    Feature("Disabling the radix cache", ("--disable-radix-cache",), "refused",
            "Program-aware KV accounting, eviction and offload live in the "
            "radix cache."),
    Feature("Data parallelism", ("--dp-size", "--data-parallel-size"), "refused",
            "One program table per scheduler; run one server per replica behind "
            "python -m thunderagent_sglang.router --backends URL1,URL2 instead.",
            refused_unless="1"),
    Feature("Tensor parallelism", ("--tp-size", "--tensor-parallel-size"), "tested",
            "CI serves --tp-size 2 on a CPU: every rank decides with rank 0's clock and "
            "measures, sent with SGLang's per-step request broadcast; the ranks' program "
            "state digests are compared (GET /thunderagent/digest)."),
    Feature("Pipeline parallelism", ("--pp-size", "--pipeline-parallel-size"), "refused",
            "Stages would need the same agreement across the pipeline (rank 0's step rides "
            "only the tensor-parallel broadcast); not built or tested.", refused_unless="1"),
    Feature("Several nodes", ("--nnodes",), "refused",
            "Ranks on other nodes are not tested; serve one node per replica behind the "
            "router.", refused_unless="1"),
    Feature("DP attention", ("--enable-dp-attention",), "refused",
            "Attention data parallelism runs several schedulers, one program table each."),
    Feature("Prefill/decode disaggregation", ("--disaggregation-mode",), "refused",
            "Programs would be split across two engines; not supported.",
            refused_unless="null"),
)


def refusals(argv: list[str]) -> list[str]:
    """One message per refused feature the command line turns on."""
    found = []
    for feature in FEATURES:
        if feature.status != "refused":
            continue
        for flag in feature.flags:
            if not launch_args.has_flag(argv, flag):
                continue
            value = launch_args.flag_value(argv, flag)
            if feature.refused_unless is not None and value == feature.refused_unless:
                continue
            found.append(
                f"{flag} ({feature.name}) is not supported with ThunderAgent's "
                f"program-aware features: {feature.note} Remove the flag, or set "
                f"{config.DISABLE_ENV}=1 to serve plain SGLang."
            )
    return found
