"""Check the installed SGLang and apply, check or revert the source patches.

Patches are unified diffs relative to site-packages, applied with GNU patch
(-p1).  A patch's state is read with dry runs: applied when it reverses
cleanly, not applied when it applies cleanly, conflict otherwise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

import thunderagent_sglang
from thunderagent_sglang import PINNED_SGLANG_VERSION

from .manifest import PatchEntry, PatchError

APPLIED = "applied"
NOT_APPLIED = "not applied"
CONFLICT = "conflict"

PATCH_TOOL = "/usr/bin/patch"
REINSTALL = f"pip install --force-reinstall --no-deps sglang=={PINNED_SGLANG_VERSION}"
APPLY_COMMAND = "python -m thunderagent_sglang.patches apply"

Report = Callable[[str], None]


class SGLangNotInstalled(PatchError):
    """No sglang distribution is installed."""


class VersionMismatch(PatchError):
    """The installed SGLang is not the pinned release."""


class PatchConflict(PatchError):
    """A patch neither applies nor reverses: the SGLang sources are not stock."""


# --- SGLang installation -------------------------------------------------


def installed_sglang_version(site_packages: Path | None = None) -> str | None:
    """Return the installed SGLang version (in site_packages if given), or None."""
    if site_packages is None:
        try:
            return importlib.metadata.version("sglang")
        except importlib.metadata.PackageNotFoundError:
            return None
    dists = importlib.metadata.distributions(name="sglang", path=[str(site_packages)])
    return next((dist.version for dist in dists), None)


def check_sglang_version(installed: str | None = None, *, site_packages: Path | None = None) -> None:
    """Raise SGLangNotInstalled or VersionMismatch unless SGLang is the pinned release.

    ``installed`` defaults to the detected version (in ``site_packages`` if given).
    """
    if installed is None:
        installed = installed_sglang_version(site_packages)
    if installed is None:
        where = f" in {site_packages}" if site_packages is not None else ""
        raise SGLangNotInstalled(
            f"SGLang is not installed{where}; run scripts/setup.sh (it installs sglang=={PINNED_SGLANG_VERSION})"
        )
    if installed != PINNED_SGLANG_VERSION:
        raise VersionMismatch(
            f"installed SGLang is {installed} but ThunderAgent-SGLang is pinned to {PINNED_SGLANG_VERSION}: "
            f"run `pip install sglang=={PINNED_SGLANG_VERSION}` (or scripts/setup.sh)"
        )


def find_site_packages() -> Path:
    """Return the directory holding the installed ``sglang`` package, without importing it."""
    spec = importlib.util.find_spec("sglang")
    if spec is not None and spec.origin and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).parent.parent
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).parent
    raise SGLangNotInstalled(
        f"SGLang is not installed; run scripts/setup.sh (it installs sglang=={PINNED_SGLANG_VERSION})"
    )


def resolve_site_packages(site_packages: Path | None = None) -> Path:
    """Return site_packages (default: detected), checking it holds an sglang package."""
    site = Path(site_packages) if site_packages is not None else find_site_packages()
    if not (site / "sglang").is_dir():
        raise SGLangNotInstalled(f"no sglang package in {site}; pass the site-packages directory that holds it")
    return site


def default_patches_dir() -> Path:
    """Return ``patches/sglang-<pinned>/`` at the repository root."""
    root = Path(thunderagent_sglang.__file__).resolve().parent.parent
    return root / "patches" / f"sglang-{PINNED_SGLANG_VERSION}"


# --- GNU patch -----------------------------------------------------------


def find_patch_tool() -> str:
    """Return the GNU patch executable, or raise PatchError saying how to install it."""
    if os.access(PATCH_TOOL, os.X_OK):
        return PATCH_TOOL
    found = shutil.which("patch")
    if found:
        return found
    raise PatchError("GNU patch is not installed (needed for the SGLang source patches): run `apt-get install patch`")


def _run_patch(tool: str, entry: PatchEntry, site: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        tool, "-p1", "-d", str(site), "--forward", "--batch", "--fuzz=0",
        "--no-backup-if-mismatch", "--reject-file=-", "-i", str(entry.path.resolve()), *flags,
    ]
    env = {key: value for key, value in os.environ.items() if key != "POSIXLY_CORRECT"}
    env["LC_ALL"] = "C"
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def patch_state(entry: PatchEntry, site_packages: Path, tool: str) -> str:
    """Return APPLIED, NOT_APPLIED or CONFLICT for one patch."""
    if _run_patch(tool, entry, site_packages, "--reverse", "--dry-run").returncode == 0:
        return APPLIED
    if _run_patch(tool, entry, site_packages, "--dry-run").returncode == 0:
        return NOT_APPLIED
    return CONFLICT


def patch_states(entries: Iterable[PatchEntry], site_packages: Path, tool: str | None = None) -> list[tuple[PatchEntry, str]]:
    """Return (entry, state) for every patch, in manifest order."""
    tool = tool or find_patch_tool()
    return [(entry, patch_state(entry, Path(site_packages), tool)) for entry in entries]


def _conflict(entry: PatchEntry, site: Path, tool: str, reverting: bool) -> PatchConflict:
    detail = _last_line(_run_patch(tool, entry, site, "--dry-run"))
    fix = f"run `{REINSTALL}`" + ("" if reverting else f" then rerun `{APPLY_COMMAND}`")
    return PatchConflict(
        f"{entry.file} neither applies nor reverses cleanly in {site} ({detail}): "
        f"the SGLang sources differ from stock {PINNED_SGLANG_VERSION}; {fix}"
    )


def _patch(tool: str, entry: PatchEntry, site: Path, reverse: bool) -> None:
    result = _run_patch(tool, entry, site, *(["--reverse"] if reverse else []))
    if result.returncode != 0:
        verb = "revert" if reverse else "apply"
        raise PatchError(f"patch failed to {verb} {entry.file} in {site}: {_last_line(result)}")


# --- apply / revert / check ----------------------------------------------


def apply_patches(entries: Iterable[PatchEntry], site_packages: Path, *, tool: str | None = None, report: Report = print) -> None:
    """Apply the patches in order; on failure, revert those applied by this call."""
    _change(list(entries), Path(site_packages), tool or find_patch_tool(), report, reverse=False)


def revert_patches(entries: Iterable[PatchEntry], site_packages: Path, *, tool: str | None = None, report: Report = print) -> None:
    """Revert the patches in reverse order; on failure, re-apply those reverted by this call."""
    _change(list(entries)[::-1], Path(site_packages), tool or find_patch_tool(), report, reverse=True)


def _change(entries: list[PatchEntry], site: Path, tool: str, report: Report, reverse: bool) -> None:
    done_state, done_word, skip_word = (
        (NOT_APPLIED, "reverted", "not applied, nothing to revert") if reverse else (APPLIED, "applied", "already applied")
    )
    changed: list[PatchEntry] = []
    try:
        for entry in entries:
            state = patch_state(entry, site, tool)
            if state == done_state:
                report(f"{entry.file}: {skip_word}")
                continue
            if state == CONFLICT:
                raise _conflict(entry, site, tool, reverting=reverse)
            _patch(tool, entry, site, reverse)
            changed.append(entry)
            report(f"{entry.file}: {done_word}")
    except PatchError:
        _roll_back(changed, site, tool, report, reverse)
        raise


def _roll_back(changed: list[PatchEntry], site: Path, tool: str, report: Report, reverse: bool) -> None:
    for entry in reversed(changed):
        try:
            _patch(tool, entry, site, not reverse)
        except PatchError as exc:
            raise PatchError(f"{exc}; could not roll back, restore stock SGLang with `{REINSTALL}`") from None
        report(f"{entry.file}: rolled back")


def check_patches(entries: Iterable[PatchEntry], site_packages: Path, *, tool: str | None = None, report: Report = print) -> bool:
    """Report each patch's state; return True only when all are applied."""
    states = patch_states(entries, site_packages, tool)
    for entry, state in states:
        hint = f" (sources differ from stock SGLang {PINNED_SGLANG_VERSION}: run `{REINSTALL}`)" if state == CONFLICT else ""
        report(f"{entry.file}: {state}{hint}")
    return all(state == APPLIED for _, state in states)
