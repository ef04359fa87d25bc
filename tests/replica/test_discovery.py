"""Router discovery by DNS: which addresses a name stands for (`AddressBook`), the reporter
following them with an injected resolver (real channels to small routers on loopback), the
system resolver on `localhost`, and the `--router-dns` flags."""

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from certs import make_pki

from common.auth import is_authorized
from common.wire import CHANNEL_PATH, ReplicaSnapshot, decode_snapshot
from replica._cli import run_replica
from replica._discovery import AddressBook, RouterName, resolve_addresses
from replica._reporter import Reporter

from polling import until

SECRET = "discovery-secret"
NAME = "routers.test"
A, B = "127.0.0.1", "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to loopback
INTERVAL_S = 0.02
FORGET_AFTER_S = 0.4


# -- the address book (pure) ---------------------------------------------------------------


def test_the_first_answer_adds_every_address() -> None:
    book = AddressBook(forget_after_s=30)
    changes = book.answered(["10.0.0.1", "fd00::1"], now=0)
    assert changes.added == ["10.0.0.1", "fd00::1"]
    assert changes.dropped == []
    assert book.addresses == ["10.0.0.1", "fd00::1"]


def test_an_address_is_dropped_only_once_missing_for_forget_after_s() -> None:
    book = AddressBook(forget_after_s=30)
    book.answered(["10.0.0.1", "10.0.0.2"], now=0)
    assert book.answered(["10.0.0.1"], now=5).dropped == []  # missing since 5
    assert book.answered(["10.0.0.1"], now=34.9).dropped == []
    changes = book.answered(["10.0.0.1"], now=35)
    assert changes.dropped == ["10.0.0.2"]
    assert changes.added == []
    assert book.addresses == ["10.0.0.1"]


def test_an_address_back_in_an_answer_starts_its_missing_clock_again() -> None:
    book = AddressBook(forget_after_s=30)
    book.answered(["10.0.0.1", "10.0.0.2"], now=0)
    book.answered(["10.0.0.1"], now=1)
    assert book.answered(["10.0.0.1", "10.0.0.2"], now=20).added == []  # it was never dropped
    assert book.answered(["10.0.0.1"], now=40).dropped == []  # missing since 40, not 1
    assert book.answered(["10.0.0.1"], now=70).dropped == ["10.0.0.2"]


def test_a_restarted_router_is_added_at_once_and_its_old_address_dropped_later() -> None:
    book = AddressBook(forget_after_s=30)
    book.answered(["10.0.0.1", "10.0.0.2"], now=0)
    changes = book.answered(["10.0.0.1", "10.0.0.9"], now=3)
    assert (changes.added, changes.dropped) == (["10.0.0.9"], [])
    changes = book.answered(["10.0.0.1", "10.0.0.9"], now=33)
    assert (changes.added, changes.dropped) == ([], ["10.0.0.2"])


def test_an_empty_answer_is_no_news() -> None:
    book = AddressBook(forget_after_s=30)
    book.answered(["10.0.0.1"], now=0)
    for now in (10, 100, 1000):
        changes = book.answered([], now=now)
        assert (changes.added, changes.dropped) == ([], [])
    assert book.addresses == ["10.0.0.1"]
    assert book.answered(["10.0.0.1"], now=1001).dropped == []


# -- router names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://modelplex-router-peers:8000", RouterName("http", "modelplex-router-peers", 8000)),
        ("https://Router.Example:443/", RouterName("https", "router.example", 443)),
        ("http://[::1]:9", RouterName("http", "::1", 9)),
    ],
)
def test_a_router_name_parses(url: str, name: RouterName) -> None:
    assert RouterName.parse(url) == name


def test_a_router_name_makes_urls_for_its_addresses() -> None:
    name = RouterName.parse("https://routers.test:8443")
    assert name.url == "https://routers.test:8443"
    assert name.host_header == "routers.test:8443"
    assert name.address_url("10.0.0.1") == "https://10.0.0.1:8443"
    assert name.address_url("fd00::1") == "https://[fd00::1]:8443"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://routers.test", "needs the routers' port"),
        ("http://routers.test:0", "needs the routers' port"),
        ("ws://routers.test:8000", "must be an http://NAME:PORT or https://NAME:PORT URL"),
        ("routers.test:8000", "must be an http://NAME:PORT or https://NAME:PORT URL"),
        ("http://routers.test:http", "has a bad port"),
        ("http://routers.test:99999", "has a bad port"),
        ("http://routers.test:8000/router", "must be just a scheme, a name and a port"),
        ("http://user@routers.test:8000", "must be just a scheme, a name and a port"),
        ("http://:8000", "needs a name to resolve"),
    ],
)
def test_a_bad_router_name_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        RouterName.parse(url)


# -- the reporter following a name ---------------------------------------------------------


class Router:
    """The router's end of the state channel on one address: counts connections, keeps the
    `Host` each one named and the snapshots it got."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.connections = 0
        self.hangups = 0
        self.open = 0
        self.hosts: list[str | None] = []
        self.snapshots: list[ReplicaSnapshot] = []
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def start(self, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get(CHANNEL_PATH, self._channel)
        app.on_shutdown.append(self._close_sockets)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, port, ssl_context=ssl_context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _close_sockets(self, _app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close()

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        if not is_authorized(request.headers.get("Authorization"), SECRET):
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        self.open += 1
        self.hosts.append(request.headers.get("Host"))
        self._sockets.add(ws)
        try:
            async for message in ws:
                self.snapshots.append(decode_snapshot(message.data))
        finally:
            self._sockets.discard(ws)
            self.open -= 1
            self.hangups += 1
        return ws


class Answers:
    """An injected resolver: answers with `answer` (or raises it), and counts lookups."""

    def __init__(self, answer: Sequence[str] | BaseException) -> None:
        self.answer = answer
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return list(self.answer)

    async def wait_lookups(self, count: int) -> None:
        """Until `count` more lookups have happened."""
        target = len(self.lookups) + count
        await until(lambda: len(self.lookups) >= target, f"{count} more lookups")


def free_port(*addresses: str) -> int:
    """A port free on every one of `addresses` (bound to each, then released)."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(_family(addresses[0])))
            first.bind((addresses[0], 0))
            port: int = first.getsockname()[1]
            try:
                for address in addresses[1:]:
                    other = stack.enter_context(socket.socket(_family(address)))
                    other.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {addresses}")


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def snapshot() -> ReplicaSnapshot:
    return ReplicaSnapshot(
        replica_id="replica-1",
        incarnation="i1",
        sequence=0,
        url="http://127.0.0.1:1",
        capacity=2,
        models=(),
        loading=(),
        in_flight=0,
        max_ongoing_requests=4,
        draining=False,
    )


@pytest.fixture
async def closing() -> AsyncIterator[list[Reporter | Router]]:
    """Reporters and routers to close (in that order) when the test ends."""
    things: list[Reporter | Router] = []
    yield things
    for thing in things:
        if isinstance(thing, Reporter):
            await thing.close(final_report=False)
    for thing in things:
        if isinstance(thing, Router):
            await thing.stop()


async def start_routers(
    closing: list[Reporter | Router],
    *addresses: str,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, list[Router]]:
    port = free_port(*addresses)
    routers = [Router(address) for address in addresses]
    for router in routers:
        closing.append(router)
        await router.start(port, ssl_context)
    return port, routers


def start_reporter(
    closing: list[Reporter | Router],
    name: RouterName,
    answers: Answers | None,
    *,
    routers: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> Reporter:
    reporter = Reporter(
        routers,
        secret=SECRET,
        build_snapshot=snapshot,
        heartbeat_interval_s=0.1,
        ssl_context=ssl_context,
        router_names=[name],
        discovery_interval_s=INTERVAL_S,
        forget_after_s=FORGET_AFTER_S,
        **({} if answers is None else {"resolve": answers}),
    )
    closing.insert(0, reporter)
    reporter.start()
    return reporter


async def test_every_address_of_the_name_gets_a_channel_that_names_the_name(
    closing: list[Reporter | Router],
) -> None:
    port, (a, b) = await start_routers(closing, A, B)
    answers = Answers([A, B])
    reporter = start_reporter(closing, RouterName("http", NAME, port), answers)
    await until(lambda: a.snapshots and b.snapshots, "a report at both routers")
    assert answers.lookups[0] == (NAME, port)
    assert a.hosts == b.hosts == [f"{NAME}:{port}"]
    assert reporter.routers == {f"http://{A}:{port}": True, f"http://{B}:{port}": True}
    await answers.wait_lookups(3)
    assert (a.connections, b.connections) == (1, 1)  # an answer that repeats opens nothing


async def test_an_address_gone_from_dns_is_dropped_after_forget_after_s_and_comes_back(
    closing: list[Reporter | Router],
) -> None:
    loop = asyncio.get_running_loop()
    port, (a, b) = await start_routers(closing, A, B)
    answers = Answers([A, B])
    reporter = start_reporter(closing, RouterName("http", NAME, port), answers)
    await until(lambda: a.open and b.open, "channels to both routers")
    answers.answer = [A]
    await answers.wait_lookups(1)
    gone_at = loop.time()
    await until(lambda: b.hangups == 1, "the channel to the router gone from DNS to close")
    assert loop.time() - gone_at >= FORGET_AFTER_S - INTERVAL_S
    assert reporter.routers == {f"http://{A}:{port}": True}
    assert (a.open, a.hangups) == (1, 0)
    answers.answer = [B, A]
    await until(lambda: b.open, "a channel to the router back in DNS")
    assert b.connections == 2
    assert a.connections == 1


@pytest.mark.parametrize(
    "failure",
    [
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        [],
        RuntimeError("a resolver with a bug"),
    ],
    ids=["dns-error", "empty-answer", "resolver-bug"],
)
async def test_a_failed_lookup_keeps_every_channel(
    closing: list[Reporter | Router],
    caplog: pytest.LogCaptureFixture,
    failure: BaseException | list[str],
) -> None:
    port, (a, b) = await start_routers(closing, A, B)
    answers = Answers([A, B])
    reporter = start_reporter(closing, RouterName("http", NAME, port), answers)
    await until(lambda: a.open and b.open, "channels to both routers")
    answers.answer = failure
    with caplog.at_level(logging.INFO, logger="modelplex.replica"):
        await answers.wait_lookups(round(3 * FORGET_AFTER_S / INTERVAL_S))  # well past forgetting
        assert (a.open, b.open, a.hangups, b.hangups) == (1, 1, 0, 0)
        assert reporter.connected == 2
        complaints = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(complaints) == 1, [r.getMessage() for r in complaints]  # once per streak
        assert NAME in complaints[0].getMessage()
        answers.answer = [A, B]
        await answers.wait_lookups(3)
    assert (a.connections, b.connections) == (1, 1)
    assert any("resolves again" in r.getMessage() for r in caplog.records)


async def test_a_name_and_a_given_router_at_one_address_share_its_channel(
    closing: list[Reporter | Router],
) -> None:
    port, (a, b) = await start_routers(closing, A, B)
    answers = Answers([A, B])
    reporter = start_reporter(
        closing, RouterName("http", NAME, port), answers, routers=[f"http://{A}:{port}/"]
    )
    await until(lambda: a.open and b.open, "channels to both routers")
    answers.answer = [B]
    await answers.wait_lookups(round(3 * FORGET_AFTER_S / INTERVAL_S))  # well past forgetting
    assert (a.connections, a.open) == (1, 1)  # given with --router: DNS does not take it away
    assert reporter.routers == {f"http://{A}:{port}": True, f"http://{B}:{port}": True}


@pytest.mark.parametrize(
    ("name", "connects"),
    [("localhost", True), ("elsewhere.test", False)],
    ids=["name-in-certificate", "name-not-in-certificate"],
)
async def test_tls_checks_the_certificate_against_the_name_not_the_address(
    closing: list[Reporter | Router],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    connects: bool,
) -> None:
    pki = make_pki(tmp_path)  # the router's certificate: for 127.0.0.1 and localhost
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.node_cert, pki.node_key)
    address = B if connects else A  # B is not in the certificate, A is
    port, (router,) = await start_routers(closing, address, ssl_context=server_tls)
    answers = Answers([address])
    with caplog.at_level(logging.WARNING, logger="modelplex.replica"):
        reporter = start_reporter(
            closing,
            RouterName("https", name, port),
            answers,
            ssl_context=ssl.create_default_context(cafile=pki.ca),
        )
        if connects:
            await until(lambda: router.snapshots, "a report over TLS")
            assert router.hosts == [f"localhost:{port}"]
            assert reporter.routers == {f"https://{B}:{port}": True}
        else:
            await until(
                lambda: any("cannot reach router" in r.getMessage() for r in caplog.records),
                "the refused certificate to be logged",
            )
            assert router.connections == 0
            assert "elsewhere.test" in caplog.text


async def test_closing_the_reporter_stops_the_lookups(closing: list[Reporter | Router]) -> None:
    port, (a,) = await start_routers(closing, A)
    answers = Answers([A])
    reporter = start_reporter(closing, RouterName("http", NAME, port), answers)
    await until(lambda: a.open, "a channel")
    await reporter.close(final_report=True)
    await until(lambda: a.hangups == 1, "the channel to close")
    assert reporter.routers == {f"http://{A}:{port}": False}
    discoveries = reporter._discoveries
    assert discoveries
    assert all(d.task is not None and d.task.done() for d in discoveries)


# -- the system resolver -------------------------------------------------------------------


def system_addresses(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, 1, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def test_the_system_resolver_gives_every_address_of_localhost() -> None:
    addresses = await resolve_addresses("localhost", 8000)
    assert "127.0.0.1" in addresses or "::1" in addresses
    assert addresses == system_addresses("localhost")


async def test_the_system_resolver_fails_with_an_os_error_for_an_unknown_name() -> None:
    with pytest.raises(socket.gaierror):
        await resolve_addresses("no-such-host.invalid", 8000)


async def test_a_reporter_with_the_system_resolver_reaches_every_router_on_localhost(
    closing: list[Reporter | Router],
) -> None:
    addresses = system_addresses("localhost")  # 127.0.0.1, and ::1 where /etc/hosts says so
    port, routers = await start_routers(closing, *addresses)
    reporter = start_reporter(closing, RouterName.parse(f"http://localhost:{port}"), None)
    await until(lambda: all(r.snapshots for r in routers), f"a report at each of {addresses}")
    assert all(r.hosts == [f"localhost:{port}"] for r in routers)
    assert reporter.connected == len(addresses)


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--router-dns", "http://routers.test"], "--router-dns needs the routers' port"),
        (["--router-dns", "ftp://routers.test:21"], "--router-dns must be an http://NAME:PORT"),
        (["--router-dns", "http://routers.test:8000/x"], "must be just a scheme, a name and"),
        (
            ["--router-dns", "http://routers.test:8000", "--router-dns-interval", "0"],
            "--router-dns-interval must be a positive number of seconds",
        ),
        (
            ["--router-dns", "http://routers.test:8000", "--router-dns-interval", "nan"],
            "--router-dns-interval must be a positive number of seconds",
        ),
    ],
)
def test_a_bad_router_dns_flag_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("deployment:\n  import_path: examples.synthetic:SyntheticModels\n")
    monkeypatch.setenv("MODELPLEX_SECRET", SECRET)
    assert run_replica(["--config", str(config), "--replica-id", "r", *flags]) == 2
    assert message in capsys.readouterr().err
