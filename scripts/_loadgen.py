"""The benchmark's load generator: a lean closed-loop HTTP/1.1 keep-alive client.

Run as its own process (`python _loadgen.py`, a JSON spec on stdin, a JSON result on stdout),
so that it shares no event loop with the cluster or the benchmark driver. Each of
`concurrency` connections is an `asyncio.Protocol` (under uvloop when installed) that writes
a precomputed GET, parses the answer in `data_received` (status line, Content-Length or
chunked framing, the `x-modelplex-replica` and `x-modelplex-cold` headers) and, on the same
callback, sends the next request: no task switch per request. Latency is measured with
`time.perf_counter_ns` from the write to the last byte of the answer.

Modes:
- "sequence": send `models[i]` for i in order, each connection taking the next index, until
  all are answered; per-request records come back in sequence order.
- "duration": cycle through `models` for `warmup_s` + `duration_s`; only answers completed in
  the measured window count, and a summary (throughput, latency percentiles) comes back.

A connection that breaks records status 0 for its request and reconnects. With `targets`
(a list of [host, port]), connection i connects to target i modulo their number (several
routers' own addresses, say) instead of `host` and `port`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from typing import Any, cast

_HEADERS_END = b"\r\n\r\n"
_CRLF = b"\r\n"
_READ_TO_CLOSE = -2


class _Run:
    """What all connections share: the request order, the records and the clock."""

    def __init__(self, spec: dict[str, Any]) -> None:
        host, port = spec["host"], int(spec["port"])
        header = spec.get("header", "serve_multiplexed_model_id")
        path = spec.get("path", "/")
        names: list[str] = spec["models"]
        table: dict[str, int] = {}
        self.order = [table.setdefault(name, len(table)) for name in names]
        self.requests = [
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{header}: {name}\r\n\r\n".encode()
            for name in table
        ]
        self.host, self.port = host, port
        self.targets = [(str(h), int(p)) for h, p in spec.get("targets") or [(host, port)]]
        self.duration_mode = spec.get("mode", "sequence") == "duration"
        n = len(self.order)
        self.total = n
        self.next_index = 0
        self.completed = 0
        self.start_ns = [0] * n
        self.latency_ns = [0] * n
        self.status = [0] * n
        self.replica = [""] * n
        self.cold = [False] * n
        self.window_latencies: list[int] = []
        self.window_status: dict[int, int] = {}
        self.window_replicas: dict[str, int] = {}
        self.t0 = 0
        self.measure_from = 0
        self.measure_to = 0
        self.stop_sending = False
        self.done: asyncio.Future[None] | None = None

    def take(self) -> int:
        """The next request index to send, or -1 when there is none."""
        if self.stop_sending:
            return -1
        if self.duration_mode:
            if time.perf_counter_ns() >= self.measure_to:
                self.stop_sending = True
                return -1
            index = self.next_index
            self.next_index = (index + 1) % self.total
            return index
        if self.next_index >= self.total:
            return -1
        index = self.next_index
        self.next_index += 1
        return index

    def record(
        self, index: int, sent_ns: int, end_ns: int, status: int, replica: str, cold: bool
    ) -> None:
        if self.duration_mode:
            if self.measure_from <= end_ns <= self.measure_to:
                self.window_latencies.append(end_ns - sent_ns)
                self.window_status[status] = self.window_status.get(status, 0) + 1
                self.window_replicas[replica] = self.window_replicas.get(replica, 0) + 1
            return
        self.start_ns[index] = sent_ns - self.t0
        self.latency_ns[index] = end_ns - sent_ns
        self.status[index] = status
        self.replica[index] = replica
        self.cold[index] = cold
        self.completed += 1
        if self.completed >= self.total and self.done is not None and not self.done.done():
            self.done.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: request out, answer parsed, next request out."""

    def __init__(self, run: _Run, on_lost: asyncio.Future[None]) -> None:
        self.run = run
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.index = -1
        self.sent_ns = 0
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.in_body = False
        self.remaining = 0  # body bytes left; for chunked, of the current chunk
        self.chunked = False
        self.status_code = 0
        self.replica_id = ""
        self.cold = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.send_next()

    def send_next(self) -> None:
        index = self.run.take()
        self.index = index
        if index < 0:
            if self.transport is not None:
                self.transport.close()
            return
        assert self.transport is not None
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.run.requests[self.run.order[index]])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.index >= 0 and self._parse():
            self.run.record(
                self.index,
                self.sent_ns,
                time.perf_counter_ns(),
                self.status_code,
                self.replica_id,
                self.cold,
            )
            close = self.close_after
            self._reset_answer()
            if close:
                self.index = -2  # answered; the connection ends and is replaced
                assert self.transport is not None
                self.transport.close()
                return
            self.send_next()

    def _parse(self) -> bool:
        """Consume what the buffer holds of the answer; True once the answer is complete."""
        buf = self.buffer
        if not self.in_body:
            end = buf.find(_HEADERS_END)
            if end < 0:
                return False
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._read_head(head)
            self.in_body = True
            if self.remaining == 0 and not self.chunked:
                return True
        if self.remaining == _READ_TO_CLOSE:
            buf.clear()
            return False
        if not self.chunked:
            take = min(self.remaining, len(buf))
            del buf[:take]
            self.remaining -= take
            return self.remaining == 0
        while True:
            if self.remaining > 0:
                if len(buf) < self.remaining + 2:
                    return False
                del buf[: self.remaining + 2]
                self.remaining = 0
            line_end = buf.find(_CRLF)
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size:
                del buf[: line_end + 2]
                self.remaining = size
                continue
            trailer_end = buf.find(_HEADERS_END, line_end)
            if trailer_end < 0:
                return False
            del buf[: trailer_end + 4]
            return True

    def _read_head(self, head: bytes) -> None:
        self.status_code = int(head[9:12])
        lower = head.lower()
        self.replica_id = _header(head, lower, b"\r\nx-modelplex-replica:") or ""
        self.cold = _header(head, lower, b"\r\nx-modelplex-cold:") == "1"
        self.close_after = (_header(head, lower, b"\r\nconnection:") or "").lower() == "close"
        if self.status_code in (204, 304) or 100 <= self.status_code < 200:
            self.remaining = 0
            return
        length = _header(head, lower, b"\r\ncontent-length:")
        if length is not None:
            self.remaining = int(length)
        elif "chunked" in (_header(head, lower, b"\r\ntransfer-encoding:") or "").lower():
            self.chunked = True
        else:
            self.remaining = _READ_TO_CLOSE
            self.close_after = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.index >= 0:
            now = time.perf_counter_ns()
            ok = self.remaining == _READ_TO_CLOSE
            status = self.status_code if ok else 0
            self.run.record(self.index, self.sent_ns, now, status, self.replica_id, self.cold)
        if not self.on_lost.done():
            self.on_lost.set_result(None)


def _header(head: bytes, lower: bytes, name: bytes) -> str | None:
    start = lower.find(name)
    if start < 0:
        return None
    end = head.find(_CRLF, start + 2)
    return head[start + len(name) : end if end >= 0 else len(head)].strip().decode("latin-1")


async def _connection_loop(run: _Run, number: int) -> None:
    """Keep connection `number` alive until the run stops sending."""
    loop = asyncio.get_running_loop()
    host, port = run.targets[number % len(run.targets)]
    while not run.stop_sending and (run.duration_mode or run.next_index < run.total):
        lost: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(_Connection, run, lost), host, port)
        except OSError:
            index = run.take()
            if index >= 0:
                now = time.perf_counter_ns()
                run.record(index, now, now, 0, "", False)
            await asyncio.sleep(0.05)
            continue
        await lost


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank] / 1e6


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    run = _Run(spec)
    loop = asyncio.get_running_loop()
    run.done = loop.create_future()
    concurrency = int(spec.get("concurrency", 1))
    cpu0 = time.process_time()
    run.t0 = time.perf_counter_ns()
    run.measure_from = run.t0 + int(float(spec.get("warmup_s", 0.0)) * 1e9)
    run.measure_to = run.measure_from + int(float(spec.get("duration_s", 0.0)) * 1e9)
    loops = [asyncio.ensure_future(_connection_loop(run, n)) for n in range(concurrency)]
    timeout_s = float(spec.get("timeout_s", 600.0))
    try:
        if run.duration_mode:
            await asyncio.wait_for(asyncio.gather(*loops), timeout_s)
        elif run.total:
            await asyncio.wait_for(run.done, timeout_s)
    except TimeoutError:
        pass
    run.stop_sending = True
    for task in loops:
        task.cancel()
    wall_s = (time.perf_counter_ns() - run.t0) / 1e9
    result: dict[str, Any] = {"wall_s": wall_s, "client_cpu_s": time.process_time() - cpu0}
    if run.duration_mode:
        window = sorted(run.window_latencies)
        result.update(
            completed=len(window),
            throughput_rps=len(window) / float(spec.get("duration_s", 1.0)),
            latency_ms={q: _percentile(window, v) for q, v in _QUANTILES},
            cdf_ms=[_percentile(window, i / 200) for i in range(201)] if window else [],
            status=run.window_status,
            replicas=run.window_replicas,
        )
        return result
    last_end = max(
        (s + lat for s, lat in zip(run.start_ns, run.latency_ns, strict=True)), default=0
    )
    result.update(
        completed=run.completed,
        elapsed_s=last_end / 1e9,
        start_us=[s // 1000 for s in run.start_ns],
        latency_us=[lat // 1000 for lat in run.latency_ns],
        status=run.status,
        replica=run.replica,
        cold=[int(c) for c in run.cold],
    )
    return result


_QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_main(spec))
    json.dump(result, sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main()
