"""Every SGLang symbol we touch is listed in compat.py and matches the pinned version."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderagent_sglang import compat
from thunderagent_sglang.engine import hooks
from thunderagent_sglang.engine.cpu_platform import STANDIN_DIR

PACKAGE = Path(compat.__file__).parent
GLUE = PACKAGE / "engine"


def python_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if STANDIN_DIR not in p.parents)


def sglang_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import of sglang in a file; name None for `import x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "sglang"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sglang":
            found += [(node.module, a.name) for a in node.names]
    return found


def test_installed_sglang_matches_every_listed_symbol():
    # In a fresh interpreter set up as the server's scheduler is: SGLang's CPU
    # engine, with the sgl_kernel stand-in where no native build imports.
    env = {**os.environ, "SGLANG_USE_CPU_ENGINE": "1",
           "PYTHONPATH": os.pathsep.join([str(STANDIN_DIR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "thunderagent_sglang.compat"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(compat.SYMBOLS)} symbols checked against SGLang 0.5.23: 0 problem(s)" in result.stdout


def test_a_changed_signature_is_reported():
    wrong = compat.Symbol("thunderagent_sglang.compat:problem", "test", "(other)")
    assert compat.problem(wrong) == (
        "thunderagent_sglang.compat:problem: signature is (symbol: 'Symbol') -> 'str | None', "
        "expected (other)")


def test_a_missing_symbol_is_reported():
    gone = compat.Symbol("thunderagent_sglang.compat:no_such_thing", "test")
    assert compat.problem(gone).startswith("thunderagent_sglang.compat:no_such_thing: missing")


def test_only_the_glue_package_and_compat_import_sglang():
    offenders = [str(p.relative_to(PACKAGE)) for p in python_files()
                 if sglang_imports(p) and GLUE not in p.parents and p != Path(compat.__file__)]
    assert offenders == []


def test_every_sglang_import_in_the_glue_package_is_listed_in_compat():
    listed = {(s.module, (s.qualname or "").split(".")[0] or None) for s in compat.SYMBOLS}
    listed_modules = {s.module for s in compat.SYMBOLS}
    unlisted = []
    for path in python_files():
        for module, name in sglang_imports(path):
            if (module, name) not in listed and not (name is None and module in listed_modules):
                unlisted.append(f"{path.relative_to(PACKAGE)}: {module}.{name}")
    assert unlisted == []


def test_no_hook_target_is_spelled_out_outside_compat():
    spelled = []
    for path in python_files():
        if path == Path(compat.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("sglang."):
                spelled.append(f"{path.relative_to(PACKAGE)}: {node.value}")
    assert spelled == []


def test_every_hook_target_is_a_listed_symbol():
    assert set(compat.HOOK_TARGETS) <= set(compat.SYMBOLS)


def test_hooking_an_unlisted_target_is_refused():
    with pytest.raises(ValueError, match="not in compat.HOOK_TARGETS"):
        hooks.install(compat.RUN_SERVER, lambda *a: None, "after")
