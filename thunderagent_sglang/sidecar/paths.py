"""Pure-ish: a client's path inside a workspace, refused (400) if it could leave it."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from thunderagent_sglang.sidecar.errors import BadRequest


def relative_parts(path: str) -> tuple[str, ...]:
    """The path's components, relative to the workspace. Absolute paths, ``..``, NUL refused."""
    if "\x00" in path:
        raise BadRequest("path contains a NUL byte")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise BadRequest(f"path {path!r} is absolute: give it relative to the workspace")
    parts = tuple(p for p in pure.parts if p not in ("", "."))
    if ".." in parts:
        raise BadRequest(f"path {path!r} leaves the workspace ('..' is refused)")
    return parts


def inside(workspace: str, path: str) -> str:
    """The host path of ``path`` in ``workspace``; symlinks that lead outside are refused."""
    parts = relative_parts(path)
    root = os.path.realpath(workspace)
    target = os.path.join(root, *parts) if parts else root
    real = os.path.realpath(target)
    if real != root and not real.startswith(root + os.sep):
        raise BadRequest(f"path {path!r} resolves outside the workspace (through a symlink)")
    return real
