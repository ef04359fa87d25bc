"""`modelplex status`: what the routers see, as a table, JSON, or redrawn with rates.

With a running launcher of several routers, each router is read on its own address (the shared
port answers for whichever router the kernel picked) and shown in turn: its health and its
view of the replicas. A `--url` names one router.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Sequence

import aiohttp

from common.addresses import reachable_url
from common.auth import authorization_value, load_secret
from common.config import ClusterConfig, ConfigError, TlsConfig, load_config
from common.status import RouterStatusDocument
from common.tls import Side, client_context, scheme
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import LauncherInfo, control_request, find_launcher, running_launchers
from router.launch._text import fail, format_status, format_statuses, status_document
from router.launch._watch import Sample, parse_duration_buckets, rates_line

__all__ = ["fetch_status", "load_or_fail", "run_status"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: redraw in place


def load_or_fail(path: str) -> ClusterConfig | None:
    """The validated config, or None after printing `modelplex: <path>: <error>`."""
    try:
        return load_config(path)
    except ConfigError as err:
        message = str(err)
        if not message.startswith(f"{path}:"):
            message = f"{path}: {message}"
        fail(message)
        return None


def run_status(args: argparse.Namespace) -> int:
    """`modelplex status`: the routers of a running launcher (each one's own view), else the
    router at `--url` or the config's address."""
    launcher: LauncherInfo | None = None
    tls = TlsConfig()  # a bare --url: the system's trust store
    if args.url:
        url = args.url.rstrip("/")
    elif args.config:
        config = load_or_fail(args.config)
        if config is None:
            return CONFIG_ERROR_EXIT_CODE
        tls = config.tls
        launcher = find_launcher(port=config.router.port, config_path=args.config)
        if launcher is not None:
            url = launcher.router_url
        elif config.router.port == 0:
            return fail(f"no running launcher for {args.config} (router.port 0); pass --url")
        else:
            router_scheme = scheme(config.tls, Side.ROUTER)
            url = reachable_url(f"{router_scheme}://{config.router.host}:{config.router.port}")
    else:
        launchers = running_launchers()
        if len(launchers) > 1:
            urls = ", ".join(f"{i.router_url} ({i.config_path})" for i in launchers)
            return fail(f"{len(launchers)} clusters are running: {urls}; pass CONFIG or --url")
        launcher = launchers[0] if launchers else None
        url = launcher.router_url if launcher is not None else "http://127.0.0.1:8000"
        if launcher is not None:
            with contextlib.suppress(ConfigError):  # if it changed, the system's trust may do
                tls = load_config(launcher.config_path).tls
    try:
        context = client_context(tls, Side.ROUTER)
    except ValueError as err:  # a TLS file changed since the config was read
        return fail(str(err), CONFIG_ERROR_EXIT_CODE)
    # Each router's own address: the shared port would answer for whichever router it reached.
    addresses = launcher.routers if launcher is not None and not args.url else [url]
    if args.watch is not None:
        if args.watch <= 0:
            return fail("--watch takes a number of seconds > 0")
        try:
            return asyncio.run(_watch_status(addresses, context, interval_s=args.watch))
        except KeyboardInterrupt:
            return 0
    if len(addresses) > 1:
        return asyncio.run(_show_statuses(addresses, launcher, context, as_json=args.json))
    return asyncio.run(_show_status(addresses[0], launcher, context, as_json=args.json))


async def fetch_status(
    url: str, context: ssl.SSLContext | None
) -> tuple[int, RouterStatusDocument | None]:
    """The router's status, over https with `context` if given (else the system's trust);
    with the cluster secret ($MODELPLEX_SECRET), which a router that listens beyond loopback
    requires."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    secret = load_secret()
    headers = {"Authorization": authorization_value(secret)} if secret else {}
    connector = aiohttp.TCPConnector(ssl=context or True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"{url}/-/status", headers=headers) as response,
    ):
        if response.status != 200:
            return response.status, None
        data = await response.json(content_type=None)
        return response.status, status_document(data)


async def _show_status(
    url: str, launcher: LauncherInfo | None, context: ssl.SSLContext | None, *, as_json: bool
) -> int:
    try:
        code, document = await fetch_status(url, context)
    except (aiohttp.ClientError, TimeoutError) as err:
        return fail(f"cannot reach the router at {url} ({err}); is `modelplex up` running?")
    except ValueError:
        return fail(f"{url}/-/status did not answer JSON; is that a modelplex router?")
    if document is None and code == 200:
        return fail(f"{url}/-/status is not a router's status; is that a modelplex router?")
    if code == 401:
        return fail(f"{url} listens beyond loopback: set MODELPLEX_SECRET to the cluster secret")
    if document is None:
        return fail(f"{url}/-/status answered HTTP {code}")
    if as_json:
        print(json.dumps(document, indent=2))
        return 0
    print(format_status(document))
    if launcher is not None:
        for line in await _launcher_lines(launcher):
            print(line)
    return 0


async def _show_statuses(
    urls: Sequence[str],
    launcher: LauncherInfo | None,
    context: ssl.SSLContext | None,
    *,
    as_json: bool,
) -> int:
    """Every router's status, each read on its own address; 1 if none answers."""

    async def one(url: str) -> RouterStatusDocument | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            return (await fetch_status(url, context))[1]
        return None

    documents = await asyncio.gather(*(one(url) for url in urls))
    if all(document is None for document in documents):
        return fail(f"no router answers at {', '.join(urls)}; is `modelplex up` running?")
    if as_json:
        print(json.dumps({"routers": documents}, indent=2))
        return 0
    print(format_statuses(list(zip(urls, documents, strict=True))))
    if launcher is not None:
        for line in await _launcher_lines(launcher):
            print(line)
    return 0


async def _watch_status(
    urls: list[str], context: ssl.SSLContext | None, *, interval_s: float
) -> int:
    """Redraw every router's status every `interval_s`, each with its rates since the previous
    look, until Ctrl-C; a router that does not answer is said so, and the watch goes on."""
    secret = load_secret()
    headers = {"Authorization": authorization_value(secret)} if secret else {}
    timeout = aiohttp.ClientTimeout(total=5.0)
    previous: dict[str, Sample] = {}
    connector = aiohttp.TCPConnector(ssl=context or True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while True:
            lines: list[str] = []
            for url in urls:
                if len(urls) > 1:
                    lines.append(f"router {url}")
                try:
                    sample, document = await _look(session, url, headers)
                    lines.append(format_status(document))
                    if url in previous:
                        lines.append(rates_line(previous[url], sample))
                    previous[url] = sample
                except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                    lines.append(f"cannot read {url}: {err}; trying again every {interval_s:g} s")
            stamp = time.strftime("%H:%M:%S")
            shown = urls[0] if len(urls) == 1 else f"{len(urls)} routers"
            print(f"{_CLEAR}modelplex status --watch {shown}  {stamp}  (Ctrl-C ends)", flush=False)
            print("\n".join(lines), flush=True)
            await asyncio.sleep(interval_s)


async def _look(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[Sample, RouterStatusDocument]:
    """One look at a router: its counters and request-duration buckets, and its status."""
    async with session.get(f"{url}/-/status", headers=headers) as response:
        document = status_document(await response.json(content_type=None))
    async with session.get(f"{url}/-/metrics", headers=headers) as response:
        buckets = parse_duration_buckets(await response.text())
    if document is None:
        raise ValueError(f"{url}/-/status is not a router's status")
    return Sample(time.monotonic(), dict(document["router"]["counters"]), buckets), document


async def _launcher_lines(launcher: LauncherInfo) -> list[str]:
    """What the launcher knows and the router cannot: restarts, rollouts in progress."""
    try:
        _, state = await control_request(launcher, "GET", "/state", timeout_s=3.0)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []
    lines = [f"launcher pid {launcher.pid}, config {launcher.config_path}"]
    if not state.get("converged"):
        lines.append(f"  applying generation {state.get('target_generation')}: {state['progress']}")
    for r in state.get("routers") or []:
        if r.get("restarts") or r.get("phase") != "running":
            last = r.get("last_exit")
            code = f", last exit code {last['code']}" if last else ""
            lines.append(f"  {r['router']}: {r['phase']}, {r['restarts']} restarts{code}")
    for r in state.get("replicas") or []:
        last = r.get("last_exit")
        if r.get("restarts") or r.get("phase") != "running":
            code = f", last exit code {last['code']}" if last else ""
            lines.append(f"  {r['replica_id']}: {r['phase']}, {r['restarts']} restarts{code}")
    return lines
