"""The state channel, router side: replicas' reports in, the cluster view updated.

Replicas stream msgpack snapshots over a WebSocket (`CHANNEL_PATH`) or POST a single one
(`REPORT_PATH`). This glue checks the cluster secret, decodes each frame (`common.wire`),
applies it to the view, and tells the view when a channel closes or starts carrying another
replica's reports; what those events mean is the view's to decide. A bad frame gets an error
reply and the channel stays open; the router keeps serving.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web

from common.auth import is_authorized
from common.errors import error_response
from common.tls import has_client_certificate
from common.wire import MAX_FRAME_BYTES, WireError, decode_snapshot, encode_error
from router._admission import Admission
from router.view import ChannelClosed, ClusterView, ReportOutcome

__all__ = ["ReportIntake"]

logger = logging.getLogger("modelplex.router")


class ReportIntake:
    """Where replicas report: the channel and the single-report endpoint, for one router."""

    def __init__(
        self,
        view: ClusterView,
        admission: Admission,
        *,
        secret: str,
        clock: Callable[[], float],
        counters: Counter[str],
        on_down: Callable[[str], None] = lambda _: None,
        client_certificates: bool = False,
    ) -> None:
        """`on_down(replica_id)`: a replica's channel closed while it was serving (not
        draining): the requests waiting on it should not wait for their deadline.
        `client_certificates`: a report needs a client certificate that TLS verified
        (`tls.internal.client_auth`)."""
        self.view = view
        self._on_down = on_down
        self.admission = admission
        self.secret = secret
        self.clock = clock
        self.counters = counters
        self.client_certificates = client_certificates
        self._open: set[web.WebSocketResponse] = set()
        # Open channels per (replica id, incarnation): a replica that reconnects may have a new
        # channel up before the router notices its old one is dead.
        self._senders: Counter[tuple[str, str]] = Counter()

    async def close(self) -> None:
        """The router stops: close every open channel (the replicas reconnect elsewhere)."""
        for ws in list(self._open):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"router stopping")

    def _authorized(self, request: web.Request) -> bool:
        return is_authorized(request.headers.get("Authorization"), self.secret)

    def _apply(self, frame: bytes) -> tuple[str, str, ReportOutcome]:
        """Decode and apply one report; raises WireError for a bad one."""
        snapshot = decode_snapshot(frame)
        outcome = self.view.apply_report(snapshot, self.clock())
        self.counters["reports"] += 1
        if outcome in (ReportOutcome.NEW_REPLICA, ReportOutcome.NEW_INCARNATION):
            logger.info("replica %s joined at %s", snapshot.replica_id, snapshot.url)
        self.admission.offer()
        return snapshot.replica_id, snapshot.incarnation, outcome

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The refusal for a reporter without the secret or a required certificate; None: ok."""
        if self.client_certificates and not has_client_certificate(request.transport):
            self.counters["unauthorized_reports"] += 1
            message = "a client certificate from the cluster's CA is required"
            return error_response(403, "certificate_required", message)
        if self._authorized(request):
            return None
        self.counters["unauthorized_reports"] += 1
        return error_response(401, "unauthorized", "a valid cluster secret is required")

    async def channel(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None)
        await ws.prepare(request)
        self._open.add(ws)
        sender: tuple[str, str] | None = None
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    await self._reject(ws, "reports are binary msgpack frames")
                    continue
                try:
                    replica_id, incarnation, _ = self._apply(message.data)
                except WireError as exc:
                    await self._reject(ws, str(exc))
                    continue
                if sender != (replica_id, incarnation):
                    if sender is not None:
                        self._senders[sender] -= 1
                        if sender[0] != replica_id:
                            self.view.superseded(*sender)
                    sender = (replica_id, incarnation)
                    self._senders[sender] += 1
        finally:
            self._open.discard(ws)
            if sender is not None:
                self._senders[sender] -= 1
                if self._senders[sender] <= 0:
                    del self._senders[sender]
                    self._channel_closed(*sender)
        return ws

    def _channel_closed(self, replica_id: str, incarnation: str) -> None:
        replica = self.view.replicas.get(replica_id)
        draining = replica is not None and replica.draining
        outcome = self.view.channel_closed(replica_id, incarnation)
        if outcome is ChannelClosed.LEFT:
            logger.info("replica %s drained and left", replica_id)
        elif outcome is ChannelClosed.DOWN:
            logger.info("replica %s disconnected; not routing to it", replica_id)
            if not draining:  # a draining replica finishes what it has before it goes
                self._on_down(replica_id)
        self.admission.offer()

    async def _reject(self, ws: web.WebSocketResponse, message: str) -> None:
        self.counters["bad_reports"] += 1
        logger.warning("rejected a state report: %s", message)
        await ws.send_bytes(encode_error("bad_report", message))

    async def report(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.content_length is not None and request.content_length > MAX_FRAME_BYTES:
            self.counters["bad_reports"] += 1
            return error_response(413, "bad_report", f"the limit is {MAX_FRAME_BYTES} bytes")
        try:
            replica_id, _, outcome = self._apply(await request.read())
        except WireError as exc:
            self.counters["bad_reports"] += 1
            logger.warning("rejected a state report: %s", exc)
            return error_response(400, "bad_report", str(exc))
        return web.json_response({"replica_id": replica_id, "outcome": outcome.value})
