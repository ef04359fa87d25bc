"""`python -m router --config PATH`: run one router until SIGTERM or SIGINT.

It prints `modelplex router listening on URL` once it serves. With `router.count` above 1
(several routers on this host, as `modelplex up` runs them) it shares that port with the other
routers (SO_REUSEPORT) and also listens on a port of its own, `--direct-port` (default: any
free one), printed as `modelplex router direct address URL`: the address replicas report to
and status and admin calls use, since the shared port reaches whichever router the kernel
picks.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence

from common.addresses import is_loopback, url_host
from common.auth import load_secret
from common.config import ConfigError, load_config
from common.loop import event_loop_runner
from common.serving import Address, CannotListen, HttpLimits, listening_on, until_signal
from common.tls import Side, scheme, server_context
from router.server import RouterServer

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplex router", description=__doc__)
    parser.add_argument("--config", required=True, help="the cluster YAML")
    parser.add_argument("--host", help="bind address (default: router.host)")
    parser.add_argument("--port", type=int, help="port (default: router.port; 0 = any free)")
    parser.add_argument(
        "--direct-port",
        type=int,
        help="this router's own port beside the shared one (default with router.count > 1: "
        "any free port; with 1: none)",
    )
    parser.add_argument("--secret-file", help="cluster secret (default: $MODELPLEX_SECRET)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(
    server: RouterServer, host: str, port: int, direct_port: int | None, tls: ssl.SSLContext | None
) -> None:
    """Serve on `host:port` (shared with the other routers when `router.count` > 1) and, with
    `direct_port`, on that port of this router's own too."""
    router = server.config.router
    limits = HttpLimits(
        header_timeout_s=router.header_timeout_s, keepalive_timeout_s=router.keepalive_timeout_s
    )
    addresses = [Address(host=host, port=port, reuse_port=router.count > 1)]
    if direct_port is not None:
        addresses.append(Address(host=host, port=direct_port))
    listener = listening_on(server.app(), addresses, backlog=2048, limits=limits, ssl_context=tls)
    router_scheme = scheme(server.config.tls, Side.ROUTER)
    async with listener as bound:
        server.url = f"{router_scheme}://{url_host(host)}:{bound[0]}"
        server.direct_url = f"{router_scheme}://{url_host(host)}:{bound[-1]}"

        def announce() -> None:
            print(f"modelplex router listening on {server.url}", flush=True)
            if direct_port is not None:
                print(f"modelplex router direct address {server.direct_url}", flush=True)

        await until_signal(armed=announce)


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
    direct_port = args.direct_port
    if direct_port is None and config.router.count > 1:
        direct_port = 0
    server = RouterServer(config, secret, public=not is_loopback(host))
    try:
        with event_loop_runner() as runner:
            runner.run(_serve(server, host, port, direct_port, tls))
    except CannotListen as exc:
        print(f"modelplex router: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
