"""`GET /-/dashboard`: the router's live dashboard, one self-contained page.

The page (`router/dashboard.html`, package data) holds no data of its own: it polls `/-/status`
from the browser and computes rates and history there. It is served under the same lock as
`/-/status` (`locked`, the server's rule), and on a public router the page reads the secret from
its URL fragment (`/-/dashboard#token=SECRET`) to send as `Authorization: Bearer`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from aiohttp import web

__all__ = ["dashboard_handler"]

Lock = Callable[[web.Request], web.Response | None]
"""The server's admin rule: a refusal for `request`, or None to serve it."""


@cache
def _page() -> bytes:
    return files("router").joinpath("dashboard.html").read_bytes()


def dashboard_handler(locked: Lock) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler serving the dashboard page to requests that `locked` lets through."""

    async def dashboard(request: web.Request) -> web.Response:
        return locked(request) or web.Response(
            body=_page(),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return dashboard
