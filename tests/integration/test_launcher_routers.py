"""`modelplex up --routers 2` as a user runs it: both routers listen (one shared port, an
address each), every replica is healthy on both, `modelplex status` lists both, a drain
through the CLI takes the replica out of routing on both, a router killed with SIGKILL comes
back on its addresses, and an apply that changes `router.count` is refused, naming the key."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from common.auth import SECRET_ENV, SECRET_FILE_ENV
from common.headers import REPLICA_HEADER
from router.launch import ChildProcess, wait_for
from router.launch._control import control_request, find_launcher

ROOT = Path(__file__).resolve().parents[2]
MODEL = "serve_multiplexed_model_id"
TIMEOUT = aiohttp.ClientTimeout(total=10.0)


def write_config(path: Path, **router: Any) -> None:
    config = {
        "router": {"host": "127.0.0.1", "port": 0, **router},
        "deployment": {
            "import_path": "examples.synthetic:SyntheticModels",
            "num_replicas": 2,
            "max_num_models_per_replica": 2,
            "heartbeat_interval_s": 0.2,
            "heartbeat_timeout_s": 2.0,
            "graceful_shutdown_timeout_s": 10.0,
        },
    }
    path.write_text(yaml.safe_dump(config))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop(SECRET_ENV, None)  # the CLI gets the secret from its launcher, as a user's does
    env.pop(SECRET_FILE_ENV, None)
    return env


def modelplex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.launch", *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


class Up:
    """`modelplex up CONFIG [ARGS]` in the background, and what its routers show."""

    def __init__(self, config: Path, *args: str) -> None:
        self.config = config
        argv = [sys.executable, "-m", "router.launch", "up", str(config), *args]
        self.process = ChildProcess("up", argv, env=environment(), cwd=config.parent)
        self.url = self.process.url(timeout_s=60)
        port = int(self.url.rpartition(":")[2])
        self.info = wait_for(lambda: find_launcher(port=port, config_path=None), 60, "info")

    def statuses(self) -> list[dict[str, Any] | None]:
        done = modelplex("status", "--json", str(self.config), cwd=self.config.parent)
        assert done.returncode == 0, done.stderr
        routers: list[dict[str, Any] | None] = json.loads(done.stdout)["routers"]
        return routers

    def states(self, replica_id: str) -> list[str | None]:
        """`replica_id`'s state on each router (None: not in its view, or no answer)."""
        return [
            next((r["state"] for r in s["replicas"] if r["replica_id"] == replica_id), None)
            if s is not None
            else None
            for s in self.statuses()
        ]

    def stop(self) -> int:
        self.process.signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.process.stop()
        return code


async def served_by(url: str, count: int) -> set[str]:
    replicas = set()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for n in range(count):
            async with session.get(url + "/", headers={MODEL: f"m{n % 3}"}) as response:
                assert response.status == 200, await response.text()
                replicas.add(response.headers[REPLICA_HEADER])
    return replicas


async def test_up_with_two_routers_serves_drains_and_restarts_a_killed_router(
    tmp_path: Path,
) -> None:
    config = tmp_path / "cluster.yaml"
    write_config(config)
    up = Up(config, "--routers", "2")
    try:
        routers = up.info.router_urls
        assert len(routers) == 2
        assert up.url not in routers
        both_healthy = ["healthy", "healthy"]
        await asyncio.to_thread(
            wait_for,
            lambda: all(up.states(r) == both_healthy for r in ("replica-1", "replica-2")),
            60,
            "both replicas healthy on both routers",
        )
        assert [s["router"]["direct_url"] for s in up.statuses() if s] == routers
        shown = modelplex("status", str(config), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "2/2 routers answering" in shown.stdout
        for url in routers:
            assert f"(its own: {url}): 2/2 replicas healthy" in shown.stdout
        assert await served_by(up.url, 6)  # the shared port answers

        drained = modelplex("drain", "replica-2", "--url", up.url, cwd=tmp_path)
        assert drained.returncode == 0, drained.stderr
        await asyncio.to_thread(
            wait_for,
            lambda: all(s != "healthy" for s in up.states("replica-2")),
            30,
            "replica-2 out of routing on both routers",
        )
        for url in routers:
            assert await served_by(url, 10) == {"replica-1"}

        status, state = await control_request(up.info, "GET", "/state")
        assert status == 200
        victim = state["routers"][1]
        assert (victim["router"], victim["url"]) == ("router-2", routers[1])
        os.kill(victim["pid"], signal.SIGKILL)

        async def restarted() -> dict[str, Any]:
            _, now = await control_request(up.info, "GET", "/state")
            router: dict[str, Any] = now["routers"][1]
            return router

        deadline = asyncio.get_running_loop().time() + 30
        while (router := await restarted())["restarts"] < 1 or router["pid"] is None:
            assert asyncio.get_running_loop().time() < deadline, router
            await asyncio.sleep(0.05)
        await asyncio.to_thread(
            wait_for,
            lambda: up.states("replica-1")[1] == "healthy",
            30,
            "replica-1 reporting to the restarted router on its address",
        )
        assert await served_by(routers[1], 5) == {"replica-1"}
    finally:
        assert up.stop() == 0


async def test_an_apply_that_changes_router_count_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    write_config(config, count=2)
    up = Up(config)
    try:
        assert len(up.info.router_urls) == 2
        write_config(config, count=3)
        refused = modelplex("apply", str(config), cwd=tmp_path)
        assert refused.returncode == 1
        assert "router.count: 2 -> 3 needs a restart of `modelplex up`" in refused.stderr
        assert "nothing was applied" in refused.stderr
        assert len([s for s in up.statuses() if s is not None]) == 2
    finally:
        assert up.stop() == 0


async def test_status_watch_shows_every_router_with_its_rates(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    write_config(config, count=2)
    up = Up(config)
    try:
        await asyncio.to_thread(
            wait_for,
            lambda: up.states("replica-1") == ["healthy", "healthy"],
            60,
            "replica-1 healthy on both routers",
        )
        argv = [sys.executable, "-m", "router.launch", "status", "--watch", "0.2", str(config)]
        watch = ChildProcess("watch", argv, env=environment(), cwd=tmp_path)
        try:
            for _ in range(4):  # traffic on both, between the looks
                for url in up.info.router_urls:
                    assert await served_by(url, 3)
                await asyncio.sleep(0.2)
        finally:
            watch.signal(signal.SIGINT)
            code = await asyncio.to_thread(watch.wait, 30)
            out = watch.output()
            watch.stop()
        assert code == 0, out
        assert "--watch 2 routers" in out
        for url in up.info.router_urls:
            assert f"router {url}" in out
        assert out.count("req/s") >= 4  # each router's rates, redrawn
    finally:
        assert up.stop() == 0


def test_up_refuses_a_bad_router_count(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    write_config(config)
    done = modelplex("up", str(config), "--routers", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "--routers: must be an integer from 1 to 64, got 0" in done.stderr
