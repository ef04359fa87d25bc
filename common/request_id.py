"""Request ids: `x-request-id` from the client when it is a sane token, else a fresh one.

The router sets it on the request it forwards and on the answer; the replica hands it to the
deployment (`replica.get_request_id()`); the access log prints it. A client's id is kept only if
it is 1 to 128 characters of letters, digits and `-._:` — anything else (spaces, control
characters, a log-injection attempt) is replaced, never echoed.
"""

from __future__ import annotations

import re
import secrets

__all__ = ["REQUEST_ID_HEADER", "new_request_id", "request_id_from"]

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_from(value: str | None) -> str:
    """The client's id if acceptable, else a new one."""
    if value is not None and _ACCEPTABLE.fullmatch(value):
        return value
    return new_request_id()
