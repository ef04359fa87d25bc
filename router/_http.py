"""HTTP details of forwarding: which headers cross the proxy, and JSON error answers."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from common.headers import INTERNAL_PREFIX, REPLICA_HEADER

__all__ = ["request_head", "request_headers", "response_headers"]

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
# The router sends the whole body at once (or chunked): a replica has no reason to say
# "100 Continue", and the client already got its answer to that from the router.
_NOT_FORWARDED = frozenset({"expect", "content-length"})


def _dropped(headers: Mapping[str, str]) -> frozenset[str]:
    connection = headers.get("Connection")
    if not connection:
        return _HOP_BY_HOP
    named = {token.strip().lower() for token in connection.split(",") if token.strip()}
    return _HOP_BY_HOP | named


def request_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers as the replica should see them, plus X-Forwarded-For. Internal
    headers (`x-modelplex-*`: eviction hints, the router's credentials) are the router's to
    set; a client's never reach a replica."""
    incoming = request.headers
    dropped = _dropped(incoming) | _NOT_FORWARDED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered not in dropped and not lowered.startswith(INTERNAL_PREFIX):
            out.add(name, value)
    peer = request.remote
    if peer:
        prior = incoming.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out


def response_headers(upstream: list[tuple[bytes, bytes]], replica_id: str) -> CIMultiDict[str]:
    """The replica's answer headers as the client should see them, plus which replica."""
    out: CIMultiDict[str] = CIMultiDict()
    connection = ""
    for name, value in upstream:
        text = name.decode("latin-1")
        if text.lower() == "connection":
            connection = ", ".join(filter(None, (connection, value.decode("latin-1"))))
        out.add(text, value.decode("utf-8", "surrogateescape"))
    for dropped in _dropped({"Connection": connection} if connection else {}) | _REFRAMED:
        out.popall(dropped, None)
    out[REPLICA_HEADER] = replica_id
    return out


def request_head(
    method: str,
    path: str,
    headers: CIMultiDict[str],
    body: object,
    replica_host: str,
) -> bytes:
    """The request line and headers sent to a replica; `body` decides the framing:
    bytes get a Content-Length, a stream is sent chunked, None has no body."""
    lines = [f"{method} {path} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if "Host" not in headers:
        lines.append(f"Host: {replica_host}")
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        lines.append("Transfer-Encoding: chunked")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
