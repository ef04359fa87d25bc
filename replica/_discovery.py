"""Router discovery by DNS: the replica reports to every address a router name resolves to.

A name such as `http://modelplex-router-peers:8000` (a Kubernetes headless Service) stands for
every router pod behind it. `RouterDiscovery` resolves it at start and every `interval_s`, and
tells its owner (the reporter) which router URLs to open a channel to and which to close.
The rules, kept by the pure `AddressBook` (time is passed in):
- an address in an answer is reported to from that answer on;
- an address is dropped only once it has been missing from every answer for `forget_after_s`
  (a router pod that restarts comes back under a new address; the old one is dropped later);
- a failed lookup or an empty answer changes nothing: a DNS hiccup never closes live channels.
Lookups go through `Resolve` (by default the running loop's `getaddrinfo`, A and AAAA), so a
test can inject its own answers. Nothing here raises into the replica: a lookup that fails, in
any way, is logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

from common.addresses import url_host

__all__ = [
    "AddressBook",
    "AddressChanges",
    "Resolve",
    "RouterDiscovery",
    "RouterName",
    "resolve_addresses",
]

logger = logging.getLogger("modelplex.replica")

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
"""`resolve(host, port)`: the IP addresses `host` has now, as strings (`OSError` if unknown)."""

DEFAULT_INTERVAL_S = 5.0
DEFAULT_FORGET_AFTER_S = 30.0
DEFAULT_LOOKUP_TIMEOUT_S = 10.0


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address (IPv4 and IPv6) the system resolver gives `host`, in its order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class RouterName:
    """`scheme://host:port` naming a set of routers: `host` is resolved, `port` is theirs."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> RouterName:
        """ValueError, saying what is wrong, unless `url` is `http(s)://NAME:PORT[/]`."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http://NAME:PORT or https://NAME:PORT URL, got {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(f"must be just a scheme, a name and a port, got {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"has a bad port: {url!r}") from None
        if port is None or port == 0:
            example = f"{parts.scheme}://NAME:8000"
            raise ValueError(f"needs the routers' port, e.g. {example}, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"needs a name to resolve, got {url!r}")
        return cls(parts.scheme, parts.hostname, port)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{url_host(self.host)}:{self.port}"

    @property
    def host_header(self) -> str:
        """What a channel sends as `Host`: the name, as a client of the name would."""
        return f"{url_host(self.host)}:{self.port}"

    def address_url(self, address: str) -> str:
        """The URL of the router at `address` (one of this name's addresses)."""
        return f"{self.scheme}://{url_host(address)}:{self.port}"


@dataclass(frozen=True)
class AddressChanges:
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class AddressBook:
    """The addresses one name stands for now, and since when each has been missing."""

    def __init__(self, *, forget_after_s: float = DEFAULT_FORGET_AFTER_S) -> None:
        self.forget_after_s = forget_after_s
        self._missing_since: dict[str, float | None] = {}  # None: in the last answer

    @property
    def addresses(self) -> list[str]:
        return list(self._missing_since)

    def answered(self, addresses: Collection[str], now: float) -> AddressChanges:
        """A lookup at `now` gave `addresses`; what to add and drop. An empty answer is no
        news (a name that loses its last router keeps it until the lookups find one again)."""
        if not addresses:
            return AddressChanges()
        changes = AddressChanges()
        for address in addresses:
            if address not in self._missing_since:
                changes.added.append(address)
            self._missing_since[address] = None
        for address, since in list(self._missing_since.items()):
            if address in addresses:
                continue
            if since is None:
                self._missing_since[address] = since = now
            if now - since >= self.forget_after_s:
                del self._missing_since[address]
                changes.dropped.append(address)
        return changes


class RouterDiscovery:
    """Keeps `add(url, name)` and `drop(url)` called as `name`'s addresses come and go."""

    def __init__(
        self,
        name: RouterName,
        *,
        add: Callable[[str, RouterName], None],
        drop: Callable[[str], None],
        resolve: Resolve = resolve_addresses,
        interval_s: float = DEFAULT_INTERVAL_S,
        forget_after_s: float = DEFAULT_FORGET_AFTER_S,
        lookup_timeout_s: float = DEFAULT_LOOKUP_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.book = AddressBook(forget_after_s=forget_after_s)
        self._add = add
        self._drop = drop
        self._resolve = resolve
        self._lookup_timeout_s = lookup_timeout_s
        self._failing = False
        self._stopped = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop looking up (the channels it added stay; their owner closes them)."""
        self._stopped.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            addresses = await self._lookup()
            if addresses is not None:
                try:
                    self._apply(self.book.answered(addresses, loop.time()))
                except Exception:
                    logger.exception("router discovery: cannot follow %s", self.name.host)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.interval_s)

    async def _lookup(self) -> list[str] | None:
        """The name's usable addresses now, or None (logged once per streak) if there are none."""
        name = self.name
        try:
            async with asyncio.timeout(self._lookup_timeout_s):
                answer = list(await self._resolve(name.host, name.port))
            addresses = [a for a in answer if _usable(a)]
        except (OSError, TimeoutError) as error:
            why = str(error) or type(error).__name__
            self._log_failure("cannot resolve %s (%s)", name.host, why)
            return None
        except Exception:
            if self._failing:
                logger.debug("router discovery: looking up %s failed", name.host, exc_info=True)
            else:
                logger.exception("router discovery: looking up %s failed", name.host)
            self._failing = True
            return None
        if not addresses:
            self._log_failure("%s resolves to no usable address (%s)", name.host, answer)
            return None
        if self._failing:
            logger.info("router discovery: %s resolves again", name.host)
            self._failing = False
        return addresses

    def _log_failure(self, message: str, *args: object) -> None:
        kept = len(self.book.addresses)
        log = logger.debug if self._failing else logger.warning
        log(
            f"router discovery: {message}; keeping the %d router(s) found before, "
            "retrying every %g s",
            *args,
            kept,
            self.interval_s,
        )
        self._failing = True

    def _apply(self, changes: AddressChanges) -> None:
        for address in changes.added:
            url = self.name.address_url(address)
            logger.info(
                "router discovery: %s has %s; reporting to %s", self.name.host, address, url
            )
            self._add(url, self.name)
        for address in changes.dropped:
            url = self.name.address_url(address)
            logger.info(
                "router discovery: %s has not had %s for %g s; no longer reporting to %s",
                self.name.host,
                address,
                self.book.forget_after_s,
                url,
            )
            self._drop(url)


def _usable(address: str) -> bool:
    """An IP address a URL can carry (not a scoped, link-local IPv6 one)."""
    if "%" in address:
        return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
