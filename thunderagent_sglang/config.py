"""Our settings in one typed place: the ``--thunderagent-*`` flags and environment.

The launcher parses the flags; the settings reach the server's subprocesses
(where the plugin runs) as JSON in ``THUNDERAGENT_CONFIG``. No SGLang import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

CONFIG_ENV = "THUNDERAGENT_CONFIG"
DISABLE_ENV = "THUNDERAGENT_DISABLE"
FLAG_PREFIX = "--thunderagent-"
DEMO_ARCHES = ("llama", "qwen3")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class ThunderAgentConfig:
    cache_dir: str | None = None  # where the demo model is built; None = default
    demo_model: str = "llama"  # architecture of the embedded demo model

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ThunderAgentConfig":
        raw = (os.environ if environ is None else environ).get(CONFIG_ENV)
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{CONFIG_ENV} is not valid JSON: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def program_features_disabled(environ: dict[str, str] | None = None) -> bool:
    """True when ``THUNDERAGENT_DISABLE`` asks for plain SGLang."""
    value = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{DISABLE_ENV}={value!r} is not understood: use 1 (plain SGLang) or 0"
    )


def add_cli_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(
        "ThunderAgent-SGLang",
        "Program-aware serving. Set THUNDERAGENT_DISABLE=1 to run plain SGLang "
        "(CPU platform support stays on).",
    )
    group.add_argument(
        "--thunderagent-cache-dir",
        metavar="DIR",
        default=None,
        help="Where the embedded demo model is built and kept "
        "(default: $THUNDERAGENT_CACHE_DIR or ~/.cache/thunderagent_sglang).",
    )
    group.add_argument(
        "--thunderagent-demo-model",
        choices=DEMO_ARCHES,
        default="llama",
        help="Architecture of the demo model served when no --model-path is "
        "given (default: llama).",
    )
    return group


def from_namespace(ns: argparse.Namespace) -> ThunderAgentConfig:
    cache_dir = ns.thunderagent_cache_dir
    if cache_dir is not None:
        cache_dir = str(Path(cache_dir).expanduser().resolve())
    return ThunderAgentConfig(cache_dir=cache_dir, demo_model=ns.thunderagent_demo_model)
