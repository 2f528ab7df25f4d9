"""The ``sglang.srt.plugins`` entry point.

SGLang calls ``register()`` in every server process (launcher, scheduler,
detokenizer, data-parallel controller) before it builds anything. It is cheap,
idempotent, and logs one line naming the process it runs in.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from thunderagent_sglang.engine import process_setup

    process_setup.setup_process()
