"""The dashboard (`/-/dashboard`) of a real cluster, rendered by headless Chromium: it shows the
replicas and their models, and follows a load without a reload.

Chromium is driven over the DevTools protocol (a websocket, with aiohttp): one page stays open
and the test reads its rendered text, so a change proves the page updates by itself. Skipped
when no Chromium binary is found (`scripts/test` installs Debian's `chromium` as root).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.auth import authorization_value
from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"
DEADLINE_S = 20.0
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_binary() -> str | None:
    found = (shutil.which(name) for name in BROWSERS)
    return next((path for path in found if path), None)


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)})")
    return binary


class Page:
    """One browser tab, spoken to over the DevTools protocol."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.socket.send_json({"id": call_id, "method": method, "params": params})
        async for message in self.socket:
            answer = json.loads(message.data)
            if answer.get("id") == call_id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result
        raise AssertionError(f"the browser closed the socket during {method}")

    async def text(self) -> str:
        result = await self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )
        return str(result["result"].get("value", ""))

    async def wait_for_text(self, *needles: str, timeout_s: float = DEADLINE_S) -> str:
        """The page's text once it holds every one of `needles`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            text = await self.text()
            if all(needle in text for needle in needles):
                return text
            if loop.time() > deadline:
                raise AssertionError(f"the dashboard never showed {needles}; it shows:\n{text}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def browser_page(binary: str, profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab; the browser is stopped on exit."""
    argv = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a profile used before holds its last browser's port
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.returncode is None, f"chromium exited with {process.returncode}"
            assert loop.time() < deadline, "chromium never opened its DevTools port"
            await asyncio.sleep(0.05)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                targets = await answer.json()
            tab = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                yield Page(socket)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def request(url: str, model: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/", headers={MODEL: model}) as answer,
    ):
        assert answer.status == 200, await answer.text()


async def test_the_dashboard_shows_the_replicas_and_follows_a_load(
    start_cluster: Callable[..., LocalCluster], chromium: str, tmp_path: Path
) -> None:
    cluster = start_cluster(num_replicas=2)
    await request(cluster.url, "first-model")
    async with browser_page(chromium, tmp_path / "profile") as page:
        await page.call("Page.navigate", url=cluster.url + "/-/dashboard")
        text = await page.wait_for_text("replica-1", "replica-2", "first-model", "live")
        assert "second-model" not in text
        await request(cluster.url, "second-model")
        await page.wait_for_text("second-model")  # the same page, never reloaded


async def test_a_public_routers_dashboard_shows_data_only_with_the_fragment_token(
    chromium: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    with LocalCluster(workdir, num_replicas=1, router_host="0.0.0.0") as cluster:
        url = cluster.url + "/-/dashboard"
        credential = authorization_value(cluster.secret)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as answer:
                assert answer.status == 200  # the page holds no data
                assert answer.content_type == "text/html"
            async with session.get(cluster.url + "/-/status") as answer:
                assert answer.status == 401  # the data it shows is locked
            async with session.get(
                cluster.url + "/-/status", headers={"Authorization": credential}
            ) as answer:
                assert answer.status == 200
        await request(cluster.url, "locked-model")
        async with browser_page(chromium, tmp_path / "profile") as page:
            # A plain browser: the page's polls carry the token it reads from the fragment.
            await page.call("Page.enable")
            await page.call("Page.navigate", url=f"{url}#token={cluster.secret}")
            await page.wait_for_text("replica-1", "locked-model", "live")
            await request(cluster.url, "later-model")  # shown only by a poll made since
            await page.wait_for_text("later-model")
