"""The `modelplex` command.

    modelplex up [CONFIG]          run a router and its replicas in the foreground
    modelplex apply CONFIG         reconcile a running cluster to CONFIG (scale, roll out)
    modelplex status [CONFIG]      the router's view of the replicas, as a table or JSON
    modelplex models               where each model is and how often it is asked for
    modelplex preload MODEL        load a model on replicas (--copies N: until N hold it)
    modelplex evict MODEL          evict a model (--replica R: from R only), after its requests
    modelplex drain REPLICA        stop routing to a replica and have it drain
    modelplex router ARGS...       one router process (`python -m router`)
    modelplex replica ARGS...      one replica process (`python -m replica`)

The admin verbs (models, preload, evict, drain) call the router's admin API (`/-/admin/`)
with the cluster secret: `$MODELPLEX_SECRET` (or `$MODELPLEX_SECRET_FILE`), else, for the
router of a launcher running here, the launcher's (asked on its control port). Their `--url`
defaults to the one running launcher's router, as `modelplex status` finds it.

Exit codes: 0 done, 1 failed (nothing running, not converged, unreachable), 2 invalid config
or usage; 141 when stdout closed early (`modelplex models | head -1`), quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from common.addresses import reachable_url
from common.auth import authorization_value, load_secret
from common.config import ClusterConfig, ConfigError, TlsConfig, dump_config, load_config
from common.status import RouterStatusDocument
from common.tls import Side, client_context, scheme
from router.launch._admin_cli import run_admin_verb
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import LauncherInfo, control_request, find_launcher, running_launchers
from router.launch._launcher import run_launcher
from router.launch._text import fail, format_status, status_document
from router.launch._watch import Sample, parse_duration_buckets, rates_line

__all__ = ["default_config_path", "main"]

POLL_INTERVAL_S = 0.5
EXAMPLES_PACKAGE = "examples"
DEFAULT_CONFIG_FILE = "default.yaml"
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: redraw in place
BROKEN_PIPE_EXIT_CODE = 141  # as if killed by SIGPIPE, the shell's convention


def default_config_path() -> Path:
    """The config `modelplex up` serves without one: `default.yaml` of the `examples` package,
    found without importing it (the launcher runs deployments, it does not import them)."""
    spec = importlib.util.find_spec(EXAMPLES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {EXAMPLES_PACKAGE!r} package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_CONFIG_FILE


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("router", "replica"):
        return _run_server(args[0], args[1:])
    parsed = _parser().parse_args(args)
    command: Callable[[argparse.Namespace], int] = parsed.command
    try:
        code = command(parsed)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left: say nothing more, even at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT_CODE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplex",
        description="Serve many models from a few replicas behind an affinity router.",
        epilog="modelplex router|replica ARGS... run one server process; see their --help.",
    )
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    up = commands.add_parser("up", help="run a cluster in the foreground (Ctrl-C stops it)")
    up.add_argument("config", nargs="?", help="cluster YAML (default: the bundled example)")
    up.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for every replica to become healthy (default: 120)",
    )
    up.set_defaults(command=_up)

    apply = commands.add_parser("apply", help="reconcile a running cluster to a config file")
    apply.add_argument("config", help="cluster YAML")
    apply.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the cluster has converged (default: wait)",
    )
    apply.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up waiting after S seconds (default: 600)",
    )
    apply.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="the running router's port (default: the config's router.port, else the launcher "
        "started from CONFIG)",
    )
    apply.set_defaults(command=_apply)

    status = commands.add_parser("status", help="show the replicas, their models and load")
    status.add_argument("config", nargs="?", help="cluster YAML (finds its running router)")
    status.add_argument("--url", help="the router's URL, e.g. http://127.0.0.1:8000")
    status.add_argument("--json", action="store_true", help="print the raw /-/status JSON")
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="S",
        help="refresh in place every S seconds (default 1) with rates, hit ratio and p99",
    )
    status.set_defaults(command=_status)

    models = commands.add_parser("models", help="where each model is, and its requests/min")
    preload = commands.add_parser("preload", help="load a model on replicas before requests")
    preload.add_argument("model", help="the model id")
    preload.add_argument(
        "--copies", type=int, default=1, metavar="N", help="until N replicas hold it (default 1)"
    )
    evict = commands.add_parser("evict", help="evict a model, once its requests are done")
    evict.add_argument("model", help="the model id")
    evict.add_argument("--replica", metavar="R", help="from replica R only (default: every one)")
    drain = commands.add_parser("drain", help="stop routing to a replica and have it drain")
    drain.add_argument("replica", help="the replica id")
    verbs = {"models": models, "preload": preload, "evict": evict, "drain": drain}
    for name, verb in verbs.items():
        verb.add_argument("--url", help="the router's URL (default: the running launcher's)")
        verb.add_argument("--json", action="store_true", help="print the router's JSON answer")
        verb.set_defaults(command=run_admin_verb, command_name=name)
    return parser


def _run_server(name: str, argv: list[str]) -> NoReturn:
    """Become `python -m router|replica ARGS...`: the servers are programs of their own."""
    os.execv(sys.executable, [sys.executable, "-m", name, *argv])


def _load(path: str) -> ClusterConfig | None:
    """The validated config, or None after printing `modelplex: <path>: <error>`."""
    try:
        return load_config(path)
    except ConfigError as err:
        message = str(err)
        if not message.startswith(f"{path}:"):
            message = f"{path}: {message}"
        fail(message)
        return None


# -- up ----------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    path = args.config or str(default_config_path())
    config = _load(path)
    if config is None:
        return CONFIG_ERROR_EXIT_CODE
    return run_launcher(
        Path(path), config, startup_timeout_s=args.startup_timeout, bundled=not args.config
    )


# -- apply -------------------------------------------------------------------------------------


def _apply(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return CONFIG_ERROR_EXIT_CODE
    port = args.port or config.router.port
    info = find_launcher(port=port, config_path=None if args.port else args.config)
    if info is None:
        where = f"serves router port {port} or " if port else ""
        return fail(
            f"no running launcher {where}was started from {args.config}; "
            f"start one with: modelplex up {args.config}"
        )
    try:
        return asyncio.run(_apply_to(info, config, args, source=str(Path(args.config).resolve())))
    except (aiohttp.ClientError, TimeoutError) as err:
        return fail(f"cannot reach the launcher (pid {info.pid}) at {info.control_url}: {err}")


async def _apply_to(
    info: LauncherInfo, config: ClusterConfig, args: argparse.Namespace, *, source: str
) -> int:
    body = {"config": dump_config(config), "source": source}
    status, result = await control_request(info, "POST", "/apply", body)
    if status != 200:
        error = result.get("error") or {}
        code = CONFIG_ERROR_EXIT_CODE if error.get("code") == "invalid_config" else 1
        return fail(f"{args.config}: {error.get('message', f'HTTP {status}')}", code)
    generation = int(result["generation"])
    print(f"generation {generation} on {info.router_url}: {result['plan']['summary']}")
    for note in result.get("notes") or []:
        print(f"note: {note}")
    if not args.wait:
        return 0
    outcome = await _wait_converged(info, generation, timeout_s=args.timeout)
    if outcome != 0:
        return outcome
    _, document = await _fetch_status(info.router_url, client_context(config.tls, Side.ROUTER))
    if document is not None:
        print(format_status(document))
    return 0


async def _wait_converged(info: LauncherInfo, generation: int, *, timeout_s: float) -> int:
    """Follow the launcher's progress until `generation` (or a newer one) has converged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    shown = ""
    while True:
        _, state = await control_request(info, "GET", "/state")
        target = int(state.get("target_generation", generation))
        if target > generation:
            print(f"generation {target} (a newer apply or a config edit) supersedes it; following")
            generation = target
        if int(state.get("converged_generation", 0)) >= generation:
            print(f"converged: {state.get('progress', '')}")
            return 0
        broken = _broken_replicas(state, generation)
        if broken:
            for replica in broken:
                tail = replica["last_exit"].get("stderr_tail") or []
                lines = "".join(f"\n    {line}" for line in tail[-15:])
                fail(f"{replica['replica_id']} cannot start (exit code 2):{lines}")
            return fail(
                "the replicas of the previous config keep serving; "
                "fix the config and apply it again"
            )
        progress = str(state.get("progress", ""))
        if progress and progress != shown:
            print(f"  {progress}", flush=True)
            shown = progress
        if loop.time() > deadline:
            return fail(
                f"not converged after {timeout_s:g} s (the launcher keeps trying); "
                f"see: modelplex status {state.get('config_path', '')}"
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def _broken_replicas(state: dict[str, Any], generation: int) -> list[dict[str, Any]]:
    """Replicas of `generation` that exited with a config or import error."""
    return [
        r
        for r in state.get("replicas") or []
        if r.get("generation", 0) >= generation
        and r.get("phase") == "backoff"
        and (r.get("last_exit") or {}).get("code") == CONFIG_ERROR_EXIT_CODE
    ]


# -- status ------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    launcher: LauncherInfo | None = None
    tls = TlsConfig()  # a bare --url: the system's trust store
    if args.url:
        url = args.url.rstrip("/")
    elif args.config:
        config = _load(args.config)
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
    if args.watch is not None:
        if args.watch <= 0:
            return fail("--watch takes a number of seconds > 0")
        try:
            return asyncio.run(_watch_status(url, context, interval_s=args.watch))
        except KeyboardInterrupt:
            return 0
    return asyncio.run(_show_status(url, launcher, context, as_json=args.json))


async def _fetch_status(
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
        code, document = await _fetch_status(url, context)
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


async def _watch_status(url: str, context: ssl.SSLContext | None, *, interval_s: float) -> int:
    """Redraw the status every `interval_s`, with the rates since the previous look, until
    Ctrl-C; a router that does not answer is said so, and the watch goes on."""
    secret = load_secret()
    headers = {"Authorization": authorization_value(secret)} if secret else {}
    timeout = aiohttp.ClientTimeout(total=5.0)
    previous: Sample | None = None
    connector = aiohttp.TCPConnector(ssl=context or True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while True:
            lines: list[str]
            try:
                async with session.get(f"{url}/-/status", headers=headers) as response:
                    document = status_document(await response.json(content_type=None))
                async with session.get(f"{url}/-/metrics", headers=headers) as response:
                    buckets = parse_duration_buckets(await response.text())
                if document is None:
                    raise ValueError(f"{url}/-/status is not a router's status")
                sample = Sample(time.monotonic(), dict(document["router"]["counters"]), buckets)
                lines = [format_status(document)]
                if previous is not None:
                    lines.append(rates_line(previous, sample))
                previous = sample
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                lines = [f"cannot read {url}: {err}; trying again every {interval_s:g} s"]
            stamp = time.strftime("%H:%M:%S")
            print(f"{_CLEAR}modelplex status --watch {url}  {stamp}  (Ctrl-C ends)", flush=False)
            print("\n".join(lines), flush=True)
            await asyncio.sleep(interval_s)


async def _launcher_lines(launcher: LauncherInfo) -> list[str]:
    """What the launcher knows and the router cannot: restarts, rollouts in progress."""
    try:
        _, state = await control_request(launcher, "GET", "/state", timeout_s=3.0)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []
    lines = [f"launcher pid {launcher.pid}, config {launcher.config_path}"]
    if not state.get("converged"):
        lines.append(f"  applying generation {state.get('target_generation')}: {state['progress']}")
    for r in state.get("replicas") or []:
        last = r.get("last_exit")
        if r.get("restarts") or r.get("phase") != "running":
            code = f", last exit code {last['code']}" if last else ""
            lines.append(f"  {r['replica_id']}: {r['phase']}, {r['restarts']} restarts{code}")
    return lines
