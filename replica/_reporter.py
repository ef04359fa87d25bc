"""The state channel, replica side: one WebSocket per router, carrying snapshots.

It owns the connections and their timing, not the content (`build_snapshot` is given):
- a fresh snapshot as soon as a channel connects;
- after `notify()`, one snapshot for every connected router within the same loop wake-up, so a
  burst of cache changes becomes one report, not one per change;
- a fresh snapshot whenever a channel has been quiet for `heartbeat_interval_s` (liveness);
- on `close()`, a final snapshot on every connected channel, then the channels close.
A router that is down, restarting or refusing us never fails the replica: the channel retries
with capped exponential backoff, forever, and logs once per streak of failures.
A channel to an https:// router is a wss:// WebSocket with `ssl_context`
(`common.tls.client_context`, which trusts the router's CA and may carry a client certificate).
Besides the routers it is given, it reports to every address of each router name it is given
(`replica._discovery`): a channel per address, opened when the address appears in DNS, closed
when it has been gone for a while. Such a channel connects to the address but speaks to the name
(TLS server name and `Host`), so a router certificate for the name is checked as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence

import aiohttp

from common.auth import authorization_value
from common.wire import (
    CHANNEL_PATH,
    MAX_FRAME_BYTES,
    ReplicaSnapshot,
    WireError,
    decode_error,
    encode_snapshot,
)
from replica._discovery import (
    DEFAULT_FORGET_AFTER_S,
    DEFAULT_INTERVAL_S,
    Resolve,
    RouterDiscovery,
    RouterName,
    resolve_addresses,
)

__all__ = ["Reporter"]

logger = logging.getLogger("modelplex.replica")


class Reporter:
    """Keeps every router told of this replica's state."""

    def __init__(
        self,
        routers: Sequence[str],
        *,
        secret: str,
        build_snapshot: Callable[[], ReplicaSnapshot],
        heartbeat_interval_s: float = 1.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 0.5,  # a restarted router hears from every replica this soon
        connect_timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        router_names: Sequence[RouterName] = (),
        resolve: Resolve = resolve_addresses,
        discovery_interval_s: float = DEFAULT_INTERVAL_S,
        forget_after_s: float = DEFAULT_FORGET_AFTER_S,
    ) -> None:
        """`ssl_context`: for https:// routers (None: the system's trust store); it may be set
        until `start()`. `router_names`: names whose every address is a router, looked up with
        `resolve` every `discovery_interval_s`; an address missing from their answers for
        `forget_after_s` is no longer reported to."""
        self._secret = secret
        self.ssl_context = ssl_context
        self._build_snapshot = build_snapshot
        self.heartbeat_interval_s = heartbeat_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._flush_scheduled = False
        self.closing = False
        self.stopped = asyncio.Event()
        self._channels: dict[str, _Channel] = {}
        self._claims: dict[str, int] = {}  # how many sources (given, or a name) want a router
        self._retiring: set[asyncio.Task[None]] = set()
        for url in dict.fromkeys(router.rstrip("/") for router in routers):
            self.add_router(url)
        self._discoveries = [
            RouterDiscovery(
                name,
                add=lambda url, name: self.add_router(
                    url, server_hostname=name.host, host_header=name.host_header
                ),
                drop=self.drop_router,
                resolve=resolve,
                interval_s=discovery_interval_s,
                forget_after_s=forget_after_s,
            )
            for name in dict.fromkeys(router_names)
        ]

    @property
    def connected(self) -> int:
        """Routers with an open channel now."""
        return sum(channel.connected for channel in self._channels.values())

    @property
    def routers(self) -> dict[str, bool]:
        """Every router reported to now (given or discovered), and whether it is connected."""
        return {url: channel.connected for url, channel in self._channels.items()}

    def add_router(
        self, url: str, *, server_hostname: str | None = None, host_header: str | None = None
    ) -> None:
        """Report to `url` too (again, if it is there already: one more `drop_router` to go).
        `server_hostname` and `host_header`: the name the router answers to, if `url` holds
        its address instead."""
        self._claims[url] = self._claims.get(url, 0) + 1
        if url in self._channels or self.closing:
            return
        channel = _Channel(self, url, server_hostname=server_hostname, host_header=host_header)
        self._channels[url] = channel
        if self._session is not None:
            channel.start(self._session)

    def drop_router(self, url: str) -> None:
        """Undo one `add_router(url)`; the last one closes its channel (without a last report:
        the router is gone, or leaving)."""
        claims = self._claims.get(url, 0) - 1
        if claims > 0:
            self._claims[url] = claims
            return
        self._claims.pop(url, None)
        channel = self._channels.pop(url, None)
        if channel is None or self._loop is None:
            return
        task = self._loop.create_task(channel.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def start(self) -> None:
        """Connect to every router (in the background). Call from the running loop."""
        if self._loop is not None:
            raise RuntimeError("the reporter is already started")
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s)
        )
        for channel in self._channels.values():
            channel.start(self._session)
        for discovery in self._discoveries:
            discovery.start()

    def notify(self) -> None:
        """The state changed: report it before the loop next sleeps. Safe to call often."""
        if self._flush_scheduled or self.closing or self._loop is None:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        connected = [channel for channel in self._channels.values() if channel.connected]
        if not connected:
            return  # each channel gets a fresh snapshot when it connects
        frame = self.fresh_frame()
        if frame is not None:
            for channel in connected:
                channel.offer(frame)

    def fresh_frame(self) -> bytes | None:
        """Encode a new snapshot; None (logged) if it cannot be encoded, which is a bug."""
        try:
            return encode_snapshot(self._build_snapshot())
        except WireError:
            logger.exception("cannot encode this replica's state report")
            return None

    def authorization(self) -> dict[str, str]:
        return {"Authorization": authorization_value(self._secret)}

    async def close(self, *, final_report: bool = True, timeout_s: float = 2.0) -> None:
        """Send a last snapshot on every open channel (if asked), then close them all."""
        if self.closing:
            await self.stopped.wait()
            return
        frame = self.fresh_frame() if final_report else None
        self.closing = True
        await asyncio.gather(*(discovery.stop() for discovery in self._discoveries))
        channels = list(self._channels.values())
        for channel in channels:
            channel.stop(frame)
        tasks = [channel.task for channel in channels if channel.task is not None]
        tasks += self._retiring
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.stopped.set()


class _Channel:
    """The connection to one router, reconnected until the reporter closes."""

    def __init__(
        self,
        reporter: Reporter,
        router_url: str,
        *,
        server_hostname: str | None = None,
        host_header: str | None = None,
    ) -> None:
        self._reporter = reporter
        self._url = router_url.rstrip("/") + CHANNEL_PATH
        self.router = router_url.rstrip("/")  # for the logs
        if host_header is not None:
            self.router += f" ({host_header})"
        self._server_hostname = server_hostname if self._url.startswith("https:") else None
        self._headers = {"Host": host_header} if host_header is not None else {}
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._retired = False
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._retired or self._reporter.closing

    def start(self, session: aiohttp.ClientSession) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(session))

    def offer(self, frame: bytes) -> None:
        """Send `frame` next, replacing any frame not sent yet (it is older)."""
        self._pending = frame
        self._wake.set()

    def stop(self, final_frame: bytes | None) -> None:
        if final_frame is not None and self.connected:
            self._pending = final_frame
        self._wake.set()

    async def retire(self, timeout_s: float = 2.0) -> None:
        """Close this channel alone (the reporter goes on), cancelling a connect in progress
        after `timeout_s`."""
        self._retired = True
        self._wake.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        except TimeoutError:
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self, session: aiohttp.ClientSession) -> None:
        reporter = self._reporter
        delay = reporter.backoff_initial_s
        failing = False
        while not self.closing:
            try:
                async with session.ws_connect(
                    self._url,
                    headers=self._headers | reporter.authorization(),
                    heartbeat=max(5.0, 5 * reporter.heartbeat_interval_s),
                    timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
                    max_msg_size=MAX_FRAME_BYTES,
                    ssl=reporter.ssl_context or True,
                    server_hostname=self._server_hostname,
                ) as ws:
                    if failing:
                        logger.info("state channel to router %s is up again", self.router)
                    failing = False
                    delay = reporter.backoff_initial_s
                    await self._serve(ws)
                if not self.closing:
                    error = ws.exception()
                    why = (
                        f"no answer to our pings ({error!r})"
                        if isinstance(error, asyncio.TimeoutError | aiohttp.ServerTimeoutError)
                        else f"closed by the router (code {ws.close_code})"
                        if error is None
                        else repr(error)
                    )
                    logger.warning(
                        "state channel to router %s ended: %s; reconnecting", self.router, why
                    )
            except aiohttp.WSServerHandshakeError as error:
                if error.status == 401:
                    if not failing:
                        logger.error(
                            "the router refused our secret (401 from %s); check that the "
                            "router and this replica share MODELPLEX_SECRET; retrying every %g s",
                            self.router,
                            reporter.backoff_max_s,
                        )
                    delay = reporter.backoff_max_s
                elif not failing:
                    logger.warning(
                        "router %s refused the state channel (HTTP %s); retrying",
                        self.router,
                        error.status,
                    )
                failing = True
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                log = logger.debug if failing else logger.warning
                detail = str(error) or type(error).__name__
                log("lost or cannot reach router %s (%s); retrying", self.router, detail)
                failing = True
            finally:
                self.connected = False
            if self.closing:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, reporter.backoff_max_s)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reporter = self._reporter
        loop = asyncio.get_running_loop()
        self._pending = None
        self.connected = True
        frame = reporter.fresh_frame()
        if frame is not None:
            await ws.send_bytes(frame)
        last_sent = loop.time()
        reader = loop.create_task(self._read(ws))
        try:
            while not reader.done():
                frame, self._pending = self._pending, None
                if frame is not None:
                    await ws.send_bytes(frame)
                    last_sent = loop.time()
                    continue
                if self.closing:
                    return
                wait_s = last_sent + reporter.heartbeat_interval_s - loop.time()
                if wait_s <= 0:
                    self._pending = reporter.fresh_frame()
                    last_sent = loop.time()  # a frame that cannot be built is not retried at once
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
        finally:
            self.connected = False
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Log what the router says back; return (and wake the writer) when it hangs up."""
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    try:
                        error = decode_error(message.data)
                    except WireError as problem:
                        logger.warning(
                            "router %s sent an unreadable frame: %s", self.router, problem
                        )
                    else:
                        logger.warning(
                            "router %s rejected our state report: %s: %s",
                            self.router,
                            error.code,
                            error.message,
                        )
                elif message.type == aiohttp.WSMsgType.ERROR:
                    break
                else:
                    logger.warning(
                        "router %s sent an unexpected %s frame", self.router, message.type
                    )
        finally:
            self._wake.set()
