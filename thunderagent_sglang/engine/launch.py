"""``python -m thunderagent_sglang.launch_server``: SGLang's launcher plus ours.

Every ``sglang.launch_server`` flag is passed through unchanged to SGLang's own
``prepare_server_args``/``run_server``; our ``--thunderagent-*`` flags are split
off first. Without a GPU the CPU engine is selected, and without a model the
embedded demo model is built and served; flags the user passed always win.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from thunderagent_sglang import config, features, launch_args
from thunderagent_sglang.engine import sidecar_process
from thunderagent_sglang.engine.logs import get_logger

PROG = "python -m thunderagent_sglang.launch_server"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, rest = launch_args.split_args(argv)
    if "-h" in rest or "--help" in rest:
        print_help()
        return 0
    error = _check_environment()
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    program_features = not config.program_features_disabled()
    refused = features.refusals(rest) if program_features else []
    if refused:
        for message in refused:
            print(f"error: {message}", file=sys.stderr)
        return 2
    plan = _plan(cfg, rest, program_features)
    os.environ.update(plan.env)
    log = get_logger()
    for note in plan.notes:
        log.info("ThunderAgent launcher: using %s", note)
    try:
        cfg, sidecar = _sidecar(cfg, plan.argv, program_features)
    except (sidecar_process.SidecarStartError, OSError) as exc:
        print(f"error: --thunderagent-sidecar: {exc}\nFix the problem above, or run without "
              "--thunderagent-sidecar.", file=sys.stderr)
        return 2
    os.environ[config.CONFIG_ENV] = cfg.to_env()
    try:
        return _run_sglang(plan.argv, sidecar)
    finally:
        if sidecar is not None:
            sidecar.stop()


def print_help() -> None:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SGLang server with ThunderAgent-SGLang's program-aware "
        "serving. Takes every `sglang serve` flag plus the --thunderagent-* "
        "flags below. With no GPU it selects SGLang's CPU engine; with no "
        "--model-path it serves an embedded demo model.",
    )
    ServerArgs.add_cli_args(parser)
    config.add_cli_group(parser)
    parser.print_help()


def _check_environment() -> str | None:
    from thunderagent_sglang.patches import PatchError, check_sglang_version

    try:
        check_sglang_version()
        config.program_features_disabled()
    except (PatchError, config.ConfigError) as exc:
        return str(exc)
    return None


def _plan(cfg: config.ThunderAgentConfig, rest: list[str],
          program_features: bool) -> launch_args.LaunchPlan:
    demo_dir = None
    if launch_args.needs_demo_model(rest):
        from pathlib import Path

        from thunderagent_sglang import demo_model

        cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        spec = demo_model.DemoModelSpec(arch=cfg.demo_model)
        demo_dir = str(demo_model.ensure_demo_model(spec, cache_dir=cache))
    return launch_args.plan_launch(
        rest,
        gpu_available=gpu_available(),
        demo_model_dir=demo_dir,
        environ=dict(os.environ),
        program_features=program_features,
        cpus=tuple(sorted(os.sched_getaffinity(0))),
    )


def _sidecar(cfg: config.ThunderAgentConfig, sglang_argv: list[str], program_features: bool):
    """(cfg with the sidecar's URL, the started sidecar or None)."""
    log = get_logger()
    if cfg.sidecar_url and not os.environ.get(sidecar_process.TOKEN_ENV, "").strip():
        log.warning("ThunderAgent launcher: %s is not set: the sidecar at %s will refuse the "
                    "server's events (set it to the sidecar's token)", sidecar_process.TOKEN_ENV,
                    cfg.sidecar_url)
    if not cfg.sidecar:
        return cfg, None
    if not program_features:
        log.warning("ThunderAgent launcher: --thunderagent-sidecar ignored: %s=1 turns off the "
                    "program events it needs", config.DISABLE_ENV)
        return cfg, None
    from pathlib import Path

    from thunderagent_sglang import demo_model

    cache = Path(cfg.cache_dir) if cfg.cache_dir else demo_model.default_cache_dir()
    options = sidecar_process.sidecar_options(cfg.sidecar_base_root, cfg.sidecar_allow_network,
                                              cfg.sidecar_idle_ttl_s)
    sidecar = sidecar_process.start(cache, sglang_argv, options=options)
    os.environ[sidecar_process.TOKEN_ENV] = sidecar.token  # for the server processes
    log.info("%s", sidecar.describe())
    return dataclasses.replace(cfg, sidecar_url=sidecar.url), sidecar


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _run_sglang(sglang_argv: list[str], sidecar=None) -> int:
    if os.environ.get(launch_args.CPU_ENGINE_ENV) == "1":
        from thunderagent_sglang.engine import cpu_platform

        cpu_platform.ensure_sgl_kernel()  # before SGLang imports sgl_kernel
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    if sidecar is not None and not config.program_features_disabled():
        from thunderagent_sglang.engine import program_http

        program_http.add_metrics_source(sidecar.metrics_text)
    server_args = prepare_server_args(sglang_argv)
    try:
        run_server(server_args)
    finally:
        if sidecar is not None:
            sidecar.stop()  # before the tree kill below, so that it can unmount cleanly
        kill_process_tree(os.getpid(), include_parent=False)
    return 0
