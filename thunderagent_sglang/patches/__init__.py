"""Numbered source patches for the pinned SGLang, and the SGLang version check.

Patches live in ``patches/sglang-<pinned>/`` with a ``manifest.toml``; manage
them with ``python -m thunderagent_sglang.patches apply|check|revert|list``.
"""

from .manager import (
    APPLIED,
    CONFLICT,
    NOT_APPLIED,
    PatchConflict,
    SGLangNotInstalled,
    VersionMismatch,
    apply_patches,
    check_patches,
    check_sglang_version,
    default_patches_dir,
    find_patch_tool,
    find_site_packages,
    installed_sglang_version,
    patch_state,
    patch_states,
    resolve_site_packages,
    revert_patches,
)
from .manifest import ManifestError, PatchEntry, PatchError, load_manifest

__all__ = [
    "APPLIED",
    "CONFLICT",
    "NOT_APPLIED",
    "ManifestError",
    "PatchConflict",
    "PatchEntry",
    "PatchError",
    "SGLangNotInstalled",
    "VersionMismatch",
    "apply_patches",
    "check_patches",
    "check_sglang_version",
    "default_patches_dir",
    "find_patch_tool",
    "find_site_packages",
    "installed_sglang_version",
    "load_manifest",
    "patch_state",
    "patch_states",
    "resolve_site_packages",
    "revert_patches",
]
