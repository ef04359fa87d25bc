"""How a bind address becomes an address a client can connect to.

A server bound to a wildcard (`0.0.0.0`, `::`, or an empty host) is reached on loopback from the
same machine; an IPv6 literal is bracketed in a URL. One table, so the launcher, the replica and
the tools agree on what `::` means.
"""

from __future__ import annotations

import ipaddress

__all__ = ["connect_host", "is_loopback", "reachable_url", "url_host"]

_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 literal bracketed (once), anything else as it is."""
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]" if ":" in host else host


def connect_host(bind_host: str) -> str:
    """The URL host for a server bound to `bind_host`: loopback for a wildcard, IPv6 bracketed."""
    host = bind_host.removeprefix("[").removesuffix("]")
    return url_host(_WILDCARD_TO_LOOPBACK.get(host, host))


def reachable_url(url: str) -> str:
    """`url` (`scheme://host:port`) with a wildcard host replaced by loopback."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, _, port = rest.rstrip("/").rpartition(":")
    return f"{scheme}://{connect_host(host)}:{port}"


def is_loopback(bind_host: str) -> bool:
    """Whether a server bound to `bind_host` is reachable from this machine only. A wildcard
    or any other address is not: it is reachable by whoever can route to it."""
    host = bind_host.removeprefix("[").removesuffix("]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
