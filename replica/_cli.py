"""`python -m replica`: run one replica process from the cluster config.

Exit codes: 0 after a graceful drain (SIGTERM or SIGINT); 2 for a problem the operator must
fix (bad config, no secret, deployment not importable, bad flags); 1 when the deployment's
constructor fails or the port cannot be bound. Logs go to stderr; stdout carries exactly one
line, `modelplex replica {replica_id} listening on {url}`, which the launcher waits for.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Sequence

from common.addresses import connect_host, is_loopback
from common.auth import load_secret
from common.config import ConfigError, DeploymentConfig, TlsConfig, load_config
from common.loop import event_loop_runner
from common.serving import CannotListen, listening, until_signal
from common.tls import Side, client_context, scheme, server_context
from replica._deployment import DeploymentError, build_deployment, import_deployment
from replica._discovery import DEFAULT_INTERVAL_S, RouterName
from replica._runtime import runtime
from replica.server import ReplicaServer

__all__ = ["run_replica"]

logger = logging.getLogger("modelplex.replica")

_PROG = "python -m replica"


class _UsageError(Exception):
    """A problem the operator must fix; exit status 2."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=_PROG, description="Run one modelplex replica.")
    parser.add_argument("--config", required=True, help="the cluster config (YAML)")
    parser.add_argument(
        "--replica-id", required=True, help='this replica\'s name, e.g. "replica-0"'
    )
    parser.add_argument(
        "--router",
        action="append",
        default=[],
        metavar="URL",
        help="a router to report to (repeatable); default: the config's router address, "
        "unless --router-dns is given",
    )
    parser.add_argument(
        "--router-dns",
        action="append",
        default=[],
        metavar="URL",
        help="http(s)://NAME:PORT: report to every address NAME resolves to (all A and AAAA "
        "records), following them as they change, e.g. a Kubernetes headless Service of the "
        "router pods (repeatable)",
    )
    parser.add_argument(
        "--router-dns-interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"how often --router-dns names are looked up again (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument("--host", help="address to bind; default: the config's deployment.host")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 (default) = any")
    parser.add_argument("--advertise-url", help="the URL routers use to reach this replica")
    parser.add_argument("--secret-file", help="file holding the cluster secret")
    return parser.parse_args(argv)


def _check_url(url: str, what: str, *, tls_key: str | None = None) -> str:
    """`url` without a trailing slash; `tls_key`: the config section that makes it https."""
    if not url.startswith(("http://", "https://")) or " " in url:
        raise _UsageError(f"{what} must be an http:// or https:// URL, got {url!r}")
    if tls_key is not None and not url.startswith("https://"):
        raise _UsageError(f"{what} must be an https:// URL (the config has {tls_key}), got {url!r}")
    return url.rstrip("/")


def _router_names(args: argparse.Namespace, tls: TlsConfig) -> list[RouterName]:
    if not args.router_dns_interval > 0:  # also refuses nan
        raise _UsageError(
            f"--router-dns-interval must be a positive number of seconds, got "
            f"{args.router_dns_interval}"
        )
    names = []
    for url in args.router_dns:
        try:
            name = RouterName.parse(url)
        except ValueError as error:
            raise _UsageError(f"--router-dns {error}") from None
        if tls.public is not None and name.scheme != "https":
            raise _UsageError(
                f"--router-dns must be an https:// URL (the config has tls.public), got {url!r}"
            )
        names.append(name)
    return names


def _routers(args: argparse.Namespace, host: str, port: int, tls: TlsConfig) -> list[str]:
    needs_https = "tls.public" if tls.public is not None else None
    routers = [_check_url(url, "--router", tls_key=needs_https) for url in args.router]
    if routers or args.router_dns:
        return routers
    if port == 0:
        raise _UsageError("the config's router.port is 0 (any port), so pass --router URL")
    return [f"{scheme(tls, Side.ROUTER)}://{connect_host(host)}:{port}"]


def run_replica(argv: Sequence[str] | None = None) -> int:
    """Run a replica until SIGTERM/SIGINT; return the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        secret = load_secret(secret_file=args.secret_file)
        if secret is None:
            raise _UsageError(
                "no cluster secret: set MODELPLEX_SECRET (or MODELPLEX_SECRET_FILE) "
                "or pass --secret-file"
            )
        routers = _routers(args, config.router.host, config.router.port, config.tls)
        router_names = _router_names(args, config.tls)
        needs_https = "tls.internal" if config.tls.internal is not None else None
        advertise_url = (
            _check_url(args.advertise_url, "--advertise-url", tls_key=needs_https)
            if args.advertise_url
            else None
        )
        listener_tls = server_context(config.tls, Side.REPLICA)
        router_tls = client_context(config.tls, Side.ROUTER)
        if not 0 <= args.port <= 65535:
            raise _UsageError(f"--port must be from 0 to 65535, got {args.port}")
        deployment_config = config.deployment
        os.environ["MODELPLEX_REPLICA_ID"] = args.replica_id
        runtime.capacity_override = deployment_config.max_num_models_per_replica
        runtime.slot_timeout_s = deployment_config.model_load_timeout_s
        runtime.max_concurrent_loads = deployment_config.max_concurrent_loads
        target = import_deployment(deployment_config.import_path)
    except (ConfigError, _UsageError, DeploymentError, ValueError) as error:
        print(f"{_PROG}: {error}", file=sys.stderr, flush=True)
        return 2

    async def main() -> int:
        return await _serve(
            target,
            deployment_config,
            replica_id=args.replica_id,
            routers=routers,
            router_names=router_names,
            router_dns_interval_s=args.router_dns_interval,
            secret=secret,
            host=args.host or deployment_config.host,
            port=args.port,
            advertise_url=advertise_url,
            listener_tls=listener_tls,
            router_tls=router_tls,
        )

    with event_loop_runner() as runner:
        return runner.run(main())


async def _serve(
    target: object,
    config: DeploymentConfig,
    *,
    replica_id: str,
    routers: list[str],
    router_names: list[RouterName],
    router_dns_interval_s: float,
    secret: str,
    host: str,
    port: int,
    advertise_url: str | None,
    listener_tls: ssl.SSLContext | None,
    router_tls: ssl.SSLContext | None,
) -> int:
    try:
        deployment = build_deployment(target, config.init_kwargs)
    except DeploymentError as error:
        print(f"{_PROG}: {error}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        logger.exception("the deployment's constructor failed")
        return 1
    server = ReplicaServer(
        deployment,
        replica_id=replica_id,
        routers=routers,
        router_names=router_names,
        router_dns_interval_s=router_dns_interval_s,
        secret=secret,
        max_ongoing_requests=config.max_ongoing_requests,
        heartbeat_interval_s=config.heartbeat_interval_s,
        graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s,
        routers_only=not is_loopback(host),
    )
    server.reporter.ssl_context = router_tls
    listener = listening(server.app, host, port, shutdown_timeout_s=1.0, ssl_context=listener_tls)
    try:
        async with listener as bound:
            own_scheme = "http" if listener_tls is None else "https"
            return await _report_and_wait(
                server, advertise_url or f"{own_scheme}://{connect_host(host)}:{bound}"
            )
    except CannotListen as error:
        print(f"{_PROG}: cannot listen on {host}:{port}: {error}", file=sys.stderr, flush=True)
        return 1


async def _report_and_wait(server: ReplicaServer, url: str) -> int:
    """Report as `url` until a stop signal, then drain; the process exit status."""
    try:
        await server.start(url)
    except ValueError as error:
        print(f"{_PROG}: cannot report as {server.replica_id!r}: {error}", file=sys.stderr)
        return 2
    await until_signal(
        armed=lambda: print(f"modelplex replica {server.replica_id} listening on {url}", flush=True)
    )
    logger.info("replica %s got a stop signal", server.replica_id)
    await server.drain()
    return 0
