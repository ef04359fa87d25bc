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
    ) -> None:
        """`ssl_context`: for https:// routers (None: the system's trust store); it may be set
        until `start()`."""
        self._secret = secret
        self.ssl_context = ssl_context
        self._build_snapshot = build_snapshot
        self.heartbeat_interval_s = heartbeat_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self._channels = [_Channel(self, url) for url in dict.fromkeys(routers)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._flush_scheduled = False
        self.closing = False
        self.stopped = asyncio.Event()

    @property
    def connected(self) -> int:
        """Routers with an open channel now."""
        return sum(channel.connected for channel in self._channels)

    def start(self) -> None:
        """Connect to every router (in the background). Call from the running loop."""
        if self._loop is not None:
            raise RuntimeError("the reporter is already started")
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s)
        )
        for channel in self._channels:
            channel.start(self._session)

    def notify(self) -> None:
        """The state changed: report it before the loop next sleeps. Safe to call often."""
        if self._flush_scheduled or self.closing or self._loop is None:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        connected = [channel for channel in self._channels if channel.connected]
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
        for channel in self._channels:
            channel.stop(frame)
        tasks = [channel.task for channel in self._channels if channel.task is not None]
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

    def __init__(self, reporter: Reporter, router_url: str) -> None:
        self._reporter = reporter
        self.router = router_url.rstrip("/")
        self._url = self.router + CHANNEL_PATH
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self.connected = False
        self.task: asyncio.Task[None] | None = None

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

    async def _run(self, session: aiohttp.ClientSession) -> None:
        reporter = self._reporter
        delay = reporter.backoff_initial_s
        failing = False
        while not reporter.closing:
            try:
                async with session.ws_connect(
                    self._url,
                    headers=reporter.authorization(),
                    heartbeat=max(5.0, 5 * reporter.heartbeat_interval_s),
                    timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
                    max_msg_size=MAX_FRAME_BYTES,
                    ssl=reporter.ssl_context or True,
                ) as ws:
                    if failing:
                        logger.info("state channel to router %s is up again", self.router)
                    failing = False
                    delay = reporter.backoff_initial_s
                    await self._serve(ws)
                if not reporter.closing:
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
            if reporter.closing:
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
                if reporter.closing:
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
