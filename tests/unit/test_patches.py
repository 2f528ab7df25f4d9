"""Unit tests for the source-patch mechanism, on a fake site-packages (no SGLang needed)."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderagent_sglang import PINNED_SGLANG_VERSION
from thunderagent_sglang.patches import (
    APPLIED,
    CONFLICT,
    NOT_APPLIED,
    ManifestError,
    PatchConflict,
    SGLangNotInstalled,
    VersionMismatch,
    apply_patches,
    check_patches,
    check_sglang_version,
    default_patches_dir,
    load_manifest,
    patch_states,
    revert_patches,
)
from thunderagent_sglang.patches.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[2]

ORIGINAL = "".join(f"line {n}\n" for n in range(1, 21))
AFTER_FIRST = ORIGINAL.replace("line 3\n", "line 3 patched by 0001\n")
AFTER_BOTH = AFTER_FIRST.replace("line 17\n", "line 17 patched by 0002\n")
INIT = '"""fake sglang"""\n'


def unified_diff(old: str, new: str, rel: str = "sglang/srt/x.py") -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=f"a/{rel}", tofile=f"b/{rel}"
    )
    return "".join(lines)


def manifest_text(files: list[str], version: str = PINNED_SGLANG_VERSION) -> str:
    text = f'sglang_version = "{version}"\n'
    for name in files:
        text += (
            f'\n[[patch]]\nfile = "{name}"\nchanges = "changes {name}"\n'
            f'why_no_hook = "no seam for {name}"\ninert_unless = "feature {name}"\n'
        )
    return text


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    (site / "sglang" / "srt").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text(INIT)
    (site / "sglang" / "srt" / "x.py").write_text(ORIGINAL)
    return site


@pytest.fixture
def patches_dir(tmp_path: Path) -> Path:
    pdir = tmp_path / "patches" / f"sglang-{PINNED_SGLANG_VERSION}"
    pdir.mkdir(parents=True)
    (pdir / "0001-first.patch").write_text(unified_diff(ORIGINAL, AFTER_FIRST))
    (pdir / "0002-second.patch").write_text(unified_diff(AFTER_FIRST, AFTER_BOTH))
    (pdir / "manifest.toml").write_text(manifest_text(["0001-first.patch", "0002-second.patch"]))
    return pdir


def target(site: Path) -> Path:
    return site / "sglang" / "srt" / "x.py"


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "thunderagent_sglang.patches", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


# --- apply / check / revert ----------------------------------------------


def test_apply_then_check_all_applied(site, patches_dir):
    entries = load_manifest(patches_dir)
    lines: list[str] = []
    apply_patches(entries, site, report=lines.append)
    assert lines == ["0001-first.patch: applied", "0002-second.patch: applied"]
    assert target(site).read_text() == AFTER_BOTH
    assert (site / "sglang" / "__init__.py").read_text() == INIT
    assert [state for _, state in patch_states(entries, site)] == [APPLIED, APPLIED]
    checked: list[str] = []
    assert check_patches(entries, site, report=checked.append) is True
    assert checked == ["0001-first.patch: applied", "0002-second.patch: applied"]
    assert all_files(site) == ["sglang/__init__.py", "sglang/srt/x.py"]


def test_apply_twice_is_idempotent(site, patches_dir):
    entries = load_manifest(patches_dir)
    apply_patches(entries, site, report=lambda line: None)
    lines: list[str] = []
    apply_patches(entries, site, report=lines.append)
    assert lines == ["0001-first.patch: already applied", "0002-second.patch: already applied"]
    assert target(site).read_text() == AFTER_BOTH


def test_revert_restores_original_bytes(site, patches_dir):
    entries = load_manifest(patches_dir)
    original = target(site).read_bytes()
    apply_patches(entries, site, report=lambda line: None)
    lines: list[str] = []
    revert_patches(entries, site, report=lines.append)
    assert lines == ["0002-second.patch: reverted", "0001-first.patch: reverted"]
    assert target(site).read_bytes() == original
    assert [state for _, state in patch_states(entries, site)] == [NOT_APPLIED, NOT_APPLIED]
    again: list[str] = []
    revert_patches(entries, site, report=again.append)
    assert again == [
        "0002-second.patch: not applied, nothing to revert",
        "0001-first.patch: not applied, nothing to revert",
    ]
    assert target(site).read_bytes() == original
    assert all_files(site) == ["sglang/__init__.py", "sglang/srt/x.py"]


def test_check_reports_partly_applied(site, patches_dir):
    entries = load_manifest(patches_dir)
    apply_patches(entries[:1], site, report=lambda line: None)
    lines: list[str] = []
    assert check_patches(entries, site, report=lines.append) is False
    assert lines == ["0001-first.patch: applied", "0002-second.patch: not applied"]


def test_conflict_names_patch_and_rolls_back_this_run(site, patches_dir):
    changed = ORIGINAL.replace("line 17\n", "line 17 changed locally\n")
    target(site).write_text(changed)
    entries = load_manifest(patches_dir)
    assert [state for _, state in patch_states(entries, site)] == [NOT_APPLIED, CONFLICT]
    lines: list[str] = []
    with pytest.raises(PatchConflict) as excinfo:
        apply_patches(entries, site, report=lines.append)
    message = str(excinfo.value)
    assert "0002-second.patch" in message
    assert f"pip install --force-reinstall --no-deps sglang=={PINNED_SGLANG_VERSION}" in message
    assert "\n" not in message
    assert lines == ["0001-first.patch: applied", "0001-first.patch: rolled back"]
    assert target(site).read_text() == changed
    assert all_files(site) == ["sglang/__init__.py", "sglang/srt/x.py"]


def test_cli_apply_check_revert(site, patches_dir):
    common = ["--site-packages", str(site), "--patches-dir", str(patches_dir), "--sglang-version", PINNED_SGLANG_VERSION]
    first = run_cli("check", *common)
    assert first.returncode == 1, first.stderr
    assert "0001-first.patch: not applied" in first.stdout
    applied = run_cli("apply", *common)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["0001-first.patch: applied", "0002-second.patch: applied"]
    assert run_cli("check", *common).returncode == 0
    assert target(site).read_text() == AFTER_BOTH
    assert run_cli("revert", *common).returncode == 0
    assert target(site).read_text() == ORIGINAL


def test_cli_conflict_exits_2_without_traceback(site, patches_dir):
    target(site).write_text(ORIGINAL.replace("line 3\n", "line 3 changed locally\n"))
    result = run_cli("apply", "--site-packages", str(site), "--patches-dir", str(patches_dir),
                     "--sglang-version", PINNED_SGLANG_VERSION)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "0001-first.patch" in result.stderr


# --- version check -------------------------------------------------------


def test_version_mismatch_message():
    with pytest.raises(VersionMismatch) as excinfo:
        check_sglang_version("0.5.22")
    assert str(excinfo.value) == (
        f"installed SGLang is 0.5.22 but ThunderAgent-SGLang is pinned to {PINNED_SGLANG_VERSION}: "
        f"run `pip install sglang=={PINNED_SGLANG_VERSION}` (or scripts/setup.sh)"
    )


def test_version_match_passes():
    assert check_sglang_version(PINNED_SGLANG_VERSION) is None


def test_not_installed_message(monkeypatch):
    import thunderagent_sglang.patches.manager as manager

    monkeypatch.setattr(manager, "installed_sglang_version", lambda site_packages=None: None)
    with pytest.raises(SGLangNotInstalled) as excinfo:
        check_sglang_version()
    assert str(excinfo.value) == (
        f"SGLang is not installed; run scripts/setup.sh (it installs sglang=={PINNED_SGLANG_VERSION})"
    )


def test_cli_version_mismatch_exit_2(site, patches_dir):
    result = run_cli("check", "--site-packages", str(site), "--patches-dir", str(patches_dir),
                     "--sglang-version", "0.5.22")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: installed SGLang is 0.5.22 but ThunderAgent-SGLang is pinned to {PINNED_SGLANG_VERSION}: "
        f"run `pip install sglang=={PINNED_SGLANG_VERSION}` (or scripts/setup.sh)"
    )
    assert target(site).read_text() == ORIGINAL


def test_cli_site_without_sglang_metadata_is_not_installed(site, patches_dir):
    result = run_cli("check", "--site-packages", str(site), "--patches-dir", str(patches_dir))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: SGLang is not installed in {site}; run scripts/setup.sh (it installs sglang=={PINNED_SGLANG_VERSION})"
    )


# --- manifest validation -------------------------------------------------


def test_manifest_missing_key(patches_dir):
    manifest = patches_dir / "manifest.toml"
    manifest.write_text(manifest_text(["0001-first.patch", "0002-second.patch"]).replace(
        'why_no_hook = "no seam for 0002-second.patch"\n', ""))
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(patches_dir)
    assert str(excinfo.value) == f"{manifest}: [[patch]] 0002-second.patch is missing required key 'why_no_hook'"


def test_manifest_unlisted_patch_file(patches_dir):
    manifest = patches_dir / "manifest.toml"
    manifest.write_text(manifest_text(["0001-first.patch"]))
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(patches_dir)
    assert str(excinfo.value).startswith(f"{patches_dir / '0002-second.patch'} is not listed in {manifest}")


def test_manifest_missing_patch_file(patches_dir):
    (patches_dir / "0002-second.patch").unlink()
    manifest = patches_dir / "manifest.toml"
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(patches_dir)
    assert str(excinfo.value) == (
        f"{manifest} lists 0002-second.patch but {patches_dir / '0002-second.patch'} does not exist"
    )


def test_manifest_version_must_match_pin(patches_dir):
    manifest = patches_dir / "manifest.toml"
    manifest.write_text(manifest_text(["0001-first.patch", "0002-second.patch"], version="0.5.22"))
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(patches_dir)
    assert str(excinfo.value) == (
        f"{manifest} is written for SGLang 0.5.22 but ThunderAgent-SGLang is pinned to {PINNED_SGLANG_VERSION}"
    )


def test_manifest_rejects_misspelled_table(patches_dir):
    manifest = patches_dir / "manifest.toml"
    manifest.write_text(manifest_text([]) + '\n[[patches]]\nfile = "0001-first.patch"\n')
    with pytest.raises(ManifestError, match="unknown top-level key 'patches'"):
        load_manifest(patches_dir)


def test_manifest_entries_in_order(patches_dir):
    entries = load_manifest(patches_dir)
    assert [e.file for e in entries] == ["0001-first.patch", "0002-second.patch"]
    assert entries[0].changes == "changes 0001-first.patch"
    assert entries[0].why_no_hook == "no seam for 0001-first.patch"
    assert entries[0].inert_unless == "feature 0001-first.patch"
    assert entries[0].path == patches_dir / "0001-first.patch"


# --- empty manifest and the shipped one ----------------------------------


def test_empty_manifest_apply_and_check_exit_0(tmp_path, site, capsys):
    pdir = tmp_path / "empty"
    pdir.mkdir()
    (pdir / "manifest.toml").write_text(manifest_text([]))
    for command in ("apply", "check"):
        code = main([command, "--site-packages", str(site), "--patches-dir", str(pdir),
                     "--sglang-version", PINNED_SGLANG_VERSION])
        assert code == 0
        assert capsys.readouterr().out == (
            f"no source patches for SGLang {PINNED_SGLANG_VERSION}; nothing to {command}\n"
        )
    assert target(site).read_text() == ORIGINAL


def test_empty_manifest_still_checks_version(tmp_path, site, capsys):
    pdir = tmp_path / "empty"
    pdir.mkdir()
    (pdir / "manifest.toml").write_text(manifest_text([]))
    code = main(["apply", "--site-packages", str(site), "--patches-dir", str(pdir), "--sglang-version", "0.5.22"])
    assert code == 2
    assert "installed SGLang is 0.5.22" in capsys.readouterr().err


def test_list_prints_entries(patches_dir, capsys):
    assert main(["list", "--patches-dir", str(patches_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0001-first.patch"
    assert "  changes:      changes 0001-first.patch" in out
    assert "  why_no_hook:  no seam for 0001-first.patch" in out
    assert out[4] == "0002-second.patch"


def test_shipped_manifest_is_valid_and_empty(capsys):
    assert default_patches_dir() == REPO_ROOT / "patches" / f"sglang-{PINNED_SGLANG_VERSION}"
    assert load_manifest(default_patches_dir()) == []
    assert main(["list"]) == 0
    assert capsys.readouterr().out == f"no source patches for SGLang {PINNED_SGLANG_VERSION}\n"
