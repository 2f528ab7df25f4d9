"""The bearer token: from THUNDERAGENT_SIDECAR_TOKEN, or generated into a 0600 file."""

from __future__ import annotations

import hmac
import os
import secrets

from thunderagent_sglang.sidecar.errors import Unauthorized
from thunderagent_sglang.sidecar.settings import TOKEN_ENV


def resolve_token(token_file: str, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """(token, generated). A generated token is written to ``token_file``, readable by its owner."""
    given = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if given:
        return given, False
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token, True


def check(header: str | None, token: str) -> None:
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(f"missing token: send 'Authorization: Bearer <token>' ({TOKEN_ENV} "
                           "or the sidecar's token file)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("wrong token: use the one the sidecar printed or wrote to ROOT/token")
