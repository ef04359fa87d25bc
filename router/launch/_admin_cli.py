"""The admin verbs of the `modelplex` command: `models`, `preload`, `evict`, `drain`.

Each is one call of one router's admin API (`/-/admin/...`; with several routers, the shared
port reaches one of them: what it asks of a replica is done once, and the replica's reports
tell the other routers, a drain included), with the cluster secret from
`$MODELPLEX_SECRET` (or `$MODELPLEX_SECRET_FILE`), or, for a running launcher's own router,
from its control port. The answer is printed for people, or as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
from typing import Any

import aiohttp

from common.auth import authorization_value, load_secret
from common.config import ConfigError, TlsConfig, load_config
from common.tls import Side, client_context
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import LauncherInfo, control_request, running_launchers
from router.launch._text import fail

__all__ = ["run_admin_verb"]

ADMIN_TIMEOUT_S = 60.0


def run_admin_verb(args: argparse.Namespace) -> int:
    """`modelplex models|preload|evict|drain`: one call of the router's admin API."""
    verb = args.command_name
    launchers = running_launchers()
    tls = TlsConfig()
    if args.url:
        url = args.url.rstrip("/")
        launcher = next((i for i in launchers if url in (i.router_url, *i.routers)), None)
    elif len(launchers) > 1:
        urls = ", ".join(f"{i.router_url} ({i.config_path})" for i in launchers)
        return fail(f"{len(launchers)} clusters are running: {urls}; pass --url")
    else:
        launcher = launchers[0] if launchers else None
        url = launcher.router_url if launcher is not None else "http://127.0.0.1:8000"
    if launcher is not None:
        with contextlib.suppress(ConfigError):
            tls = load_config(launcher.config_path).tls
    try:
        secret = load_secret()
        context = client_context(tls, Side.ROUTER)
    except ValueError as err:
        return fail(str(err), CONFIG_ERROR_EXIT_CODE)
    method, path, body = _admin_request(args)
    return asyncio.run(_admin_call(verb, url, method, path, body, args, launcher, secret, context))


def _admin_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    verb = args.command_name
    if verb == "models":
        return "GET", "/-/admin/models", None
    if verb == "preload":
        return "POST", "/-/admin/preload", {"model": args.model, "copies": args.copies}
    if verb == "evict":
        body: dict[str, Any] = {"model": args.model}
        if args.replica:
            body["replica"] = args.replica
        return "POST", "/-/admin/evict", body
    return "POST", "/-/admin/drain", {"replica": args.replica}


async def _admin_call(
    verb: str,
    url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    args: argparse.Namespace,
    launcher: LauncherInfo | None,
    secret: str | None,
    context: ssl.SSLContext | None,
) -> int:
    if secret is None and launcher is not None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            status, answer = await control_request(launcher, "GET", "/secret", timeout_s=5.0)
            if status == 200 and isinstance(answer.get("secret"), str):
                secret = answer["secret"]
    if secret is None:
        return fail("the admin API needs the cluster secret: set MODELPLEX_SECRET")
    headers = {"Authorization": authorization_value(secret)}
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context or True), timeout=timeout
            ) as session,
            session.request(method, url + path, json=body, headers=headers) as response,
        ):
            status = response.status
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as err:
        return fail(f"cannot reach the router at {url} ({err}); is `modelplex up` running?")
    except ValueError:
        return fail(f"{url}{path} did not answer JSON; is that a modelplex router?")
    if args.json:
        print(json.dumps(answer, indent=2))
    if status == 401:
        return fail(f"{url} refused the cluster secret; set MODELPLEX_SECRET to this cluster's")
    if status >= 300:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return fail(f"{verb}: {message or f'HTTP {status}'}")
    if not args.json:
        for line in _admin_lines(verb, answer):
            print(line)
    return 0


def _admin_lines(verb: str, answer: dict[str, Any]) -> list[str]:
    """The router's answer to an admin verb, for people."""
    if verb == "models":
        rows = [("MODEL", "REQ/MIN", "WAITING", "REPLICAS")]
        for model in answer.get("models") or []:
            copies = ", ".join(
                f"{c['replica']} ({c['state']}, idle {c['idle_s']:.1f} s)"
                for c in model["replicas"]
            )
            rate = f"{model['requests_per_minute']:g}"
            rows.append((model["model"], rate, str(model["waiting"]), copies or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return [
            "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]])
            for row in rows
        ]
    if verb == "preload":
        holding = ", ".join(answer["holding"]) or "none"
        loading = ", ".join(answer["loading"]) or "nothing more to load"
        return [f"{answer['model']}: loading on {loading}; already held by {holding}"]
    if verb == "evict":
        outcomes = answer.get("replicas") or {}
        words = {"evicted": "evicted", "after_requests": "leaves after its requests"}
        lines = [
            f"{answer['model']} on {rid}: {words.get(outcome, 'not held')}"
            for rid, outcome in sorted(outcomes.items())
        ]
        return lines or [f"{answer['model']}: no replica to evict it from"]
    return [f"{answer['replica']}: {answer['state']}"]
