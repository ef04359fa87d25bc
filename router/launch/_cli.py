"""The `modelplex` command.

    modelplex up [CONFIG]          run the router(s) and replicas in the foreground
    modelplex apply CONFIG         reconcile a running cluster to CONFIG (scale, roll out)
    modelplex status [CONFIG]      each router's view of the replicas, as a table or JSON
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
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from common.config import (
    ClusterConfig,
    ConfigError,
    dump_config,
    parse_config,
)
from common.tls import Side, client_context
from router.launch._admin_cli import run_admin_verb
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import LauncherInfo, control_request, find_launcher
from router.launch._launcher import run_launcher
from router.launch._status_cli import fetch_status, load_or_fail, run_status
from router.launch._text import fail, format_status

__all__ = ["default_config_path", "main"]

POLL_INTERVAL_S = 0.5
EXAMPLES_PACKAGE = "examples"
DEFAULT_CONFIG_FILE = "default.yaml"
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
    up.add_argument(
        "--routers",
        type=int,
        metavar="N",
        help="router processes sharing the router port (default: the config's router.count)",
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
    status.add_argument("--url", help="one router's URL, e.g. http://127.0.0.1:8000")
    status.add_argument(
        "--json",
        action="store_true",
        help='print the raw /-/status JSON (several routers: {"routers": [each one\'s]})',
    )
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="S",
        help="refresh in place every S seconds (default 1) with rates, hit ratio and p99",
    )
    status.set_defaults(command=run_status)

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


# -- up ----------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    path = args.config or str(default_config_path())
    config = load_or_fail(path)
    if config is None:
        return CONFIG_ERROR_EXIT_CODE
    if args.routers is not None:
        data = dump_config(config)
        data["router"]["count"] = args.routers
        try:
            config = parse_config(data, source=config.source)
        except ConfigError as err:
            return fail(f"--routers: {err.problem}", CONFIG_ERROR_EXIT_CODE)
    return run_launcher(
        Path(path),
        config,
        startup_timeout_s=args.startup_timeout,
        bundled=not args.config,
        routers_override=args.routers,
    )


# -- apply -------------------------------------------------------------------------------------


def _apply(args: argparse.Namespace) -> int:
    config = load_or_fail(args.config)
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
        if error.get("code") == "restart_required":
            return fail(f"{args.config}: {error.get('message')}; nothing was applied", code)
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
    _, document = await fetch_status(info.router_url, client_context(config.tls, Side.ROUTER))
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
