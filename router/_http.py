"""HTTP details of forwarding: which headers cross the proxy, and JSON error answers."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from common.errors import error_body
from common.headers import REPLICA_HEADER

__all__ = ["error_response", "request_headers", "response_headers"]

# RFC 9110 §7.6.1: connection-specific fields end at the proxy, along with those that
# the Connection field names. Content-Length and Transfer-Encoding are re-framed by aiohttp.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REFRAMED = frozenset({"content-length"})


def _dropped(headers: Mapping[str, str]) -> frozenset[str]:
    connection = headers.get("Connection")
    if not connection:
        return _HOP_BY_HOP
    named = {token.strip().lower() for token in connection.split(",") if token.strip()}
    return _HOP_BY_HOP | named


def request_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers as the replica should see them, plus X-Forwarded-For."""
    incoming = request.headers
    dropped = _dropped(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in dropped:
            out.add(name, value)
    peer = request.remote
    if peer:
        prior = incoming.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out


def response_headers(upstream: CIMultiDictProxy[str], replica_id: str) -> CIMultiDict[str]:
    dropped = _dropped(upstream) | _REFRAMED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in dropped:
            out.add(name, value)
    out[REPLICA_HEADER] = replica_id
    return out


def error_response(
    status: int, code: str, message: str, *, retry_after_s: int | None = None
) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return web.Response(
        status=status,
        body=error_body(code, message),
        content_type="application/json",
        headers=headers,
    )
