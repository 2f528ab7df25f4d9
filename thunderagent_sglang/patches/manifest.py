"""Read and validate ``patches/sglang-<version>/manifest.toml``.

The manifest lists the source patches in the order they are applied; every
entry must say what it changes, why no plugin hook could do it, and which
program-aware feature must be on before it changes behaviour.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path

from thunderagent_sglang import PINNED_SGLANG_VERSION

MANIFEST_NAME = "manifest.toml"
REQUIRED_KEYS = ("file", "changes", "why_no_hook", "inert_unless")
TOP_LEVEL_KEYS = ("sglang_version", "patch")


class PatchError(Exception):
    """A user-facing problem; the message is one line that says what to do."""


class ManifestError(PatchError):
    """The manifest and the patch files beside it do not agree."""


@dataclass(frozen=True)
class PatchEntry:
    """One ``[[patch]]`` table of the manifest; ``path`` is the .patch file."""

    file: str
    changes: str
    why_no_hook: str
    inert_unless: str
    path: Path


def load_manifest(patches_dir: Path, pinned: str = PINNED_SGLANG_VERSION) -> list[PatchEntry]:
    """Return the manifest's patches in order, or raise ManifestError."""
    manifest = Path(patches_dir) / MANIFEST_NAME
    data = _read_toml(manifest)
    _check_keys(data, manifest)
    _check_version(data, manifest, pinned)
    tables = _patch_tables(data, manifest)
    entries = [_parse_entry(table, number, manifest) for number, table in enumerate(tables, 1)]
    _check_files(entries, manifest)
    return entries


def _read_toml(manifest: Path) -> dict:
    if not manifest.is_file():
        raise ManifestError(f"patch manifest {manifest} not found")
    try:
        return tomllib.loads(manifest.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{manifest}: invalid TOML: {exc}") from None


def _check_keys(data: dict, manifest: Path) -> None:
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ManifestError(f"{manifest}: unknown top-level key {unknown[0]!r} (allowed: sglang_version, [[patch]])")


def _check_version(data: dict, manifest: Path, pinned: str) -> None:
    version = data.get("sglang_version")
    if version is None:
        raise ManifestError(f"{manifest}: missing required key 'sglang_version'")
    if version != pinned:
        raise ManifestError(
            f"{manifest} is written for SGLang {version} but ThunderAgent-SGLang is pinned to {pinned}"
        )


def _patch_tables(data: dict, manifest: Path) -> list[dict]:
    tables = data.get("patch", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ManifestError(f"{manifest}: 'patch' must be a list of [[patch]] tables")
    return tables


def _parse_entry(table: dict, number: int, manifest: Path) -> PatchEntry:
    name = table.get("file", f"#{number}")
    where = f"{manifest}: [[patch]] {name}"
    missing = [key for key in REQUIRED_KEYS if key not in table]
    if missing:
        raise ManifestError(f"{where} is missing required key {', '.join(map(repr, missing))}")
    unknown = sorted(set(table) - set(REQUIRED_KEYS))
    if unknown:
        raise ManifestError(f"{where} has unknown key {unknown[0]!r}")
    for key in REQUIRED_KEYS:
        if not isinstance(table[key], str) or not table[key].strip():
            raise ManifestError(f"{where}: {key!r} must be a non-empty string")
    if "/" in name or "\\" in name or not name.endswith(".patch"):
        raise ManifestError(f"{where}: 'file' must be a bare file name ending in .patch")
    fields = {key: table[key] for key in REQUIRED_KEYS}
    return PatchEntry(**fields, path=manifest.parent / name)


def _check_files(entries: list[PatchEntry], manifest: Path) -> None:
    listed = [entry.file for entry in entries]
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    if duplicates:
        raise ManifestError(f"{manifest}: {duplicates[0]} is listed more than once")
    for entry in entries:
        if not entry.path.is_file():
            raise ManifestError(f"{manifest} lists {entry.file} but {entry.path} does not exist")
    unlisted = sorted(p.name for p in manifest.parent.glob("*.patch") if p.name not in listed)
    if unlisted:
        raise ManifestError(
            f"{manifest.parent / unlisted[0]} is not listed in {manifest}: add a [[patch]] entry for it or delete it"
        )
