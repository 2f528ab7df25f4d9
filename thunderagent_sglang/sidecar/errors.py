"""Errors a sidecar client can hit, each with its HTTP status and a message saying what to do."""

from __future__ import annotations


class SidecarError(Exception):
    """Base: ``status`` is the HTTP status; the message is shown to the client as ``detail``."""

    status = 500


class BadRequest(SidecarError):
    status = 400


class Unauthorized(SidecarError):
    status = 401


class Forbidden(SidecarError):
    """The operator did not allow this (a base outside --base-root, network, root)."""

    status = 403


class NotFound(SidecarError):
    status = 404


class Conflict(SidecarError):
    status = 409


class Unenforceable(SidecarError):
    """A limit was asked for that this host or backend cannot enforce (never silently dropped)."""

    status = 422


class DiskFull(SidecarError):
    """The environment's disk cap, or the sidecar's high-water mark, was reached."""

    status = 507


class BackendUnavailable(SidecarError):
    """The chosen backend failed its capability probe."""

    status = 503


def unknown_env(env_id: str) -> NotFound:
    return NotFound(f"unknown environment {env_id!r}: list them with GET /envs")
