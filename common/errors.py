"""The JSON error every modelplex answer uses: {"error": {"code": ..., "message": ...}}.

Codes are stable identifiers clients may branch on; messages are for people.
"""

from __future__ import annotations

import json

from aiohttp import web

__all__ = ["error_body", "error_response"]


def error_body(code: str, message: str, **extra: object) -> bytes:
    """The body; `extra` adds fields beside `code` and `message` (e.g. the config key at fault)."""
    return json.dumps({"error": {"code": code, "message": message, **extra}}).encode()


def error_response(
    status: int, code: str, message: str, *, retry_after_s: int | None = None, **extra: object
) -> web.Response:
    """The error answer; `retry_after_s` adds `Retry-After` (for 503 and 429)."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return web.Response(
        status=status,
        body=error_body(code, message, **extra),
        content_type="application/json",
        headers=headers,
    )
