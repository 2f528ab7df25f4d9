"""register(): cheap, idempotent, one line naming its process; the disable switch."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

from thunderagent_sglang.engine import process_setup

RUN_TWICE = (
    "import sys; sys.modules.pop('sglang', None); "
    "from thunderagent_sglang.plugin import register; register(); register(); "
    "print('sglang imported:', 'sglang' in sys.modules)"
)


def run_register(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("SGLANG_USE_CPU_ENGINE", "THUNDERAGENT_DISABLE")}
    return subprocess.run([sys.executable, "-c", RUN_TWICE], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_entry_point_is_installed_for_sglang_plugins():
    (ep,) = [e for e in entry_points(group="sglang.srt.plugins") if e.name == "thunderagent"]
    assert ep.value == "thunderagent_sglang.plugin:register"


def test_register_twice_logs_one_line_naming_the_process():
    result = run_register()
    lines = [l for l in result.stderr.splitlines() if "plugin active" in l]
    assert len(lines) == 1, result.stderr
    assert "plugin active in main process (pid " in lines[0]
    assert "program-aware features on" in lines[0]


def test_plain_sglang_register_imports_no_sglang_at_all():
    result = run_register(THUNDERAGENT_DISABLE="1")
    assert "sglang imported: False" in result.stdout


def test_disable_switch_turns_program_features_off():
    result = run_register(THUNDERAGENT_DISABLE="1")
    assert "program-aware features off (THUNDERAGENT_DISABLE=1, plain SGLang)" in result.stderr


def test_garbage_disable_value_is_logged_and_served_as_plain_sglang():
    result = run_register(THUNDERAGENT_DISABLE="perhaps")
    assert "THUNDERAGENT_DISABLE='perhaps' is not understood" in result.stderr
    assert "program-aware features off" in result.stderr


def run_scheduler_process():  # same name as SGLang's, but not SGLang's module
    return process_setup.process_role()


def test_process_role_needs_sglangs_own_function_not_just_its_name():
    assert run_scheduler_process() == "main"
