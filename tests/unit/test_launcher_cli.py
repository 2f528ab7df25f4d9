"""The launcher's command line: help, bad input, version and feature checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from thunderagent_sglang.engine import launch
from thunderagent_sglang.patches import manager


def run_launcher(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thunderagent_sglang.launch_server", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_help_shows_sglang_flags_and_ours_in_their_own_group():
    result = run_launcher("--help")
    assert result.returncode == 0
    assert "--model-path" in result.stdout and "--enable-hierarchical-cache" in result.stdout
    ours = result.stdout[result.stdout.index("ThunderAgent-SGLang:"):]
    assert "--thunderagent-cache-dir" in ours and "--thunderagent-demo-model" in ours


def test_unknown_thunderagent_flag_exits_2_naming_it():
    result = run_launcher("--thunderagent-bogus", "1")
    assert result.returncode == 2
    assert "unrecognized arguments: --thunderagent-bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_sglang_version_is_one_line_naming_both_versions(monkeypatch, capsys):
    monkeypatch.setattr(manager, "installed_sglang_version", lambda *a, **k: "0.5.22")
    assert launch.main(["--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: installed SGLang is 0.5.22 but ThunderAgent-SGLang is pinned to "
                   "0.5.23: run `pip install sglang==0.5.23` (or scripts/setup.sh)")


def test_missing_sglang_is_reported_with_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(manager, "installed_sglang_version", lambda *a, **k: None)
    assert launch.main([]) == 2
    assert "SGLang is not installed; run scripts/setup.sh" in capsys.readouterr().err


def test_refused_feature_exits_2_before_starting_anything(monkeypatch, capsys):
    monkeypatch.delenv("THUNDERAGENT_DISABLE", raising=False)
    assert launch.main(["--dp-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dp-size (Data parallelism) is not supported")


@pytest.mark.parametrize("value", ["yes please"])
def test_garbage_disable_switch_is_refused_at_launch(monkeypatch, capsys, value):
    monkeypatch.setenv("THUNDERAGENT_DISABLE", value)
    assert launch.main([]) == 2
    assert "THUNDERAGENT_DISABLE='yes please' is not understood" in capsys.readouterr().err
