"""The cluster secret: where it comes from and how a request proves it knows it.

Router, replicas and launcher share one secret; internal requests and state channels carry it
as `Authorization: Bearer <secret>`. Requests the router forwards to a replica carry a token
derived from it instead (`data_path_token`, in `x-modelplex-authorization`), so the user's
deployment, which sees those headers, never sees the secret that lets a process report state.

Invariants:
- A loaded secret is non-empty, surrounding whitespace stripped, and made only of visible ASCII
  characters, so it always fits in one header value.
- A misconfigured source (empty variable, missing, unreadable or empty file) is an error that
  names the source; it never silently turns authentication off.
- `is_authorized` compares in constant time and fails closed: no header, a malformed header or
  an empty secret is never authorized.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

__all__ = [
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "authorization_value",
    "data_path_token",
    "generate_secret",
    "is_authorized",
    "load_secret",
]

SECRET_ENV = "MODELPLEX_SECRET"
SECRET_FILE_ENV = "MODELPLEX_SECRET_FILE"

_SCHEME = "bearer"


def generate_secret() -> str:
    """Return a fresh random secret (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def load_secret(
    *, secret_file: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Return the configured secret, or None when none is configured.

    Sources in order: `secret_file`, then `$MODELPLEX_SECRET`, then the file named by
    `$MODELPLEX_SECRET_FILE`. The first source present wins; a present but unusable source
    raises `ValueError` rather than falling through to the next one.
    `environ` defaults to `os.environ`.
    """
    env = os.environ if environ is None else environ
    if secret_file is not None:
        return _read_secret_file(secret_file)
    value = env.get(SECRET_ENV)
    if value is not None:
        return _checked(value.strip(), f"${SECRET_ENV}")
    path = env.get(SECRET_FILE_ENV)
    if path is not None:
        if not path.strip():
            raise ValueError(f"${SECRET_FILE_ENV} is set but empty")
        return _read_secret_file(path)
    return None


def authorization_value(secret: str) -> str:
    """Return the `Authorization` header value that carries `secret`."""
    return f"Bearer {secret}"


def data_path_token(secret: str) -> str:
    """The credential of requests forwarded by a router: an HMAC of the secret, not the secret."""
    key = secret.encode("utf-8", "surrogatepass")
    return hmac.new(key, b"modelplex data path v1", hashlib.sha256).hexdigest()


def is_authorized(header_value: str | None, secret: str) -> bool:
    """Tell whether an `Authorization` header value carries `secret`."""
    if header_value is None or not secret:
        return False
    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != _SCHEME:
        return False
    return hmac.compare_digest(
        parts[1].encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass")
    )


def _read_secret_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            content = file.read()
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read secret file {path}: {error}") from None
    return _checked(content.strip(), f"secret file {path}")


def _checked(secret: str, source: str) -> str:
    if not secret:
        raise ValueError(f"{source} is empty")
    if not (secret.isascii() and secret.isprintable()) or any(c.isspace() for c in secret):
        raise ValueError(f"{source} must hold visible ASCII characters only (no spaces)")
    return secret
