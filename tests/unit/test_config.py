"""Our settings: the disable switch and the hand-over to subprocesses."""

from __future__ import annotations

import pytest

from thunderagent_sglang import config


@pytest.mark.parametrize("value,disabled", [
    ("1", True), ("true", True), ("ON", True), ("0", False), ("", False), ("no", False)])
def test_disable_switch_values(value, disabled):
    assert config.program_features_disabled({"THUNDERAGENT_DISABLE": value}) is disabled


def test_disable_switch_unset_means_features_on():
    assert config.program_features_disabled({}) is False


def test_disable_switch_garbage_is_a_clear_error():
    with pytest.raises(config.ConfigError, match="THUNDERAGENT_DISABLE='maybe'"):
        config.program_features_disabled({"THUNDERAGENT_DISABLE": "maybe"})


def test_config_round_trips_through_the_environment():
    cfg = config.ThunderAgentConfig(cache_dir="/c", demo_model="qwen3")
    assert config.ThunderAgentConfig.from_env({config.CONFIG_ENV: cfg.to_env()}) == cfg


def test_missing_config_environment_gives_defaults():
    assert config.ThunderAgentConfig.from_env({}) == config.ThunderAgentConfig()


def test_invalid_config_json_is_a_clear_error():
    with pytest.raises(config.ConfigError, match="THUNDERAGENT_CONFIG is not valid JSON"):
        config.ThunderAgentConfig.from_env({config.CONFIG_ENV: "{"})
