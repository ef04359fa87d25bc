"""`GET /-/dashboard`: the router's live dashboard, one self-contained page.

The page (`router/dashboard.html`, package data) holds no data of its own: it polls `/-/status`
and `/-/metrics` from the browser and computes rates and history there. So the page itself is
served to anyone, while what it shows stays behind the same lock as `/-/status`: on a public
router the page reads the secret from its URL fragment (`/-/dashboard#token=SECRET`, which a
browser never sends to the server) and sends it as `Authorization: Bearer` on its polls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from aiohttp import web

__all__ = ["dashboard_handler"]


@cache
def _page() -> bytes:
    return files("router").joinpath("dashboard.html").read_bytes()


def dashboard_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler serving the dashboard page (no data: the data's fetches are locked)."""

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(
            body=_page(),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return dashboard
