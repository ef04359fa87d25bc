"""`python -m router --config PATH`: run one router until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence

from common.addresses import is_loopback
from common.auth import load_secret
from common.config import ConfigError, load_config
from common.loop import event_loop_runner
from common.serving import CannotListen, HttpLimits, listening, until_signal
from common.tls import Side, scheme, server_context
from router.server import RouterServer

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplex router", description=__doc__)
    parser.add_argument("--config", required=True, help="the cluster YAML")
    parser.add_argument("--host", help="bind address (default: router.host)")
    parser.add_argument("--port", type=int, help="port (default: router.port; 0 = any free)")
    parser.add_argument("--secret-file", help="cluster secret (default: $MODELPLEX_SECRET)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(server: RouterServer, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    router = server.config.router
    limits = HttpLimits(
        header_timeout_s=router.header_timeout_s, keepalive_timeout_s=router.keepalive_timeout_s
    )
    listener = listening(server.app(), host, port, backlog=2048, limits=limits, ssl_context=tls)
    async with listener as bound:
        server.url = f"{scheme(server.config.tls, Side.ROUTER)}://{host}:{bound}"
        await until_signal(
            armed=lambda: print(f"modelplex router listening on {server.url}", flush=True)
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        secret = load_secret(secret_file=args.secret_file)
        tls = server_context(config.tls, Side.ROUTER)
    except (ConfigError, ValueError) as exc:
        print(f"modelplex router: {exc}", file=sys.stderr)
        return 2
    if not secret:
        print("modelplex router: no cluster secret: set $MODELPLEX_SECRET", file=sys.stderr)
        return 2
    host = args.host or config.router.host
    port = config.router.port if args.port is None else args.port
    server = RouterServer(config, secret, public=not is_loopback(host))
    try:
        with event_loop_runner() as runner:
            runner.run(_serve(server, host, port, tls))
    except CannotListen as exc:
        print(f"modelplex router: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
