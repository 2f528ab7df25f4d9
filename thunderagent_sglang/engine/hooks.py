"""Install hooks through SGLang's HookRegistry, only on targets listed in compat."""

from __future__ import annotations

from typing import Callable

from thunderagent_sglang import compat


def install(target: compat.Symbol, fn: Callable, kind: str) -> None:
    """Register ``fn`` on ``target``; ``kind`` is before|after|around|replace.

    Hooks take effect when ``load_plugins`` applies them, right after every
    plugin's ``register()`` ran.
    """
    if target not in compat.HOOK_TARGETS:
        raise ValueError(
            f"{target.path} is not in compat.HOOK_TARGETS: list it there first"
        )
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(target.dotted, fn, HookType[kind.upper()])
