"""`modelplex up` / `apply` with real processes: scale under traffic, restart after kill -9,
and the bundled example deployment answering."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.launch import ChildProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = "serve_multiplexed_model_id"


def write_config(path: Path, **deployment: Any) -> None:
    config = {
        "router": {"host": "127.0.0.1", "port": 0},
        "deployment": {
            "import_path": "examples.synthetic:SyntheticModels",
            "init_kwargs": {"infer_s": 0.005},
            "max_num_models_per_replica": 2,
            "max_ongoing_requests": 8,
            "heartbeat_interval_s": 0.2,
            "heartbeat_timeout_s": 2.0,
            "graceful_shutdown_timeout_s": 10.0,
            **deployment,
        },
    }
    path.write_text(yaml.safe_dump(config))


def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), environment.get("PYTHONPATH")])
    )
    environment["XDG_RUNTIME_DIR"] = environment.get("XDG_RUNTIME_DIR", "")
    return environment


def cli(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.launch", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def pids_running(argv_fragment: str, *, parent: int) -> list[int]:
    """Children of `parent` whose NUL-separated command line contains `argv_fragment` (Linux
    /proc); only this test's, not those of another cluster on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if argv_fragment in cmdline and ppid == parent:
                found.append(int(entry.name))
    return found


class Launcher:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.process = ChildProcess(
            "launcher",
            [sys.executable, "-m", "router.launch", "up", str(config)],
            env=env(),
            cwd=config.parent,
        )
        self.url = self.process.url(timeout_s=60)

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.url + "/-/status") as response:
            document: dict[str, Any] = await response.json()
            return document

    def healthy_ids(self) -> set[str]:
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/-/status", timeout=10) as response:
            document = json.load(response)
        return {r["replica_id"] for r in document["replicas"] if r["state"] == "healthy"}

    def stop(self) -> int:
        self.process.signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.process.stop()
        return code


@pytest.fixture
def launcher_factory(tmp_path: Path) -> Any:
    launchers: list[Launcher] = []

    def start(**deployment: Any) -> Launcher:
        config = tmp_path / "cluster.yaml"
        write_config(config, **deployment)
        launcher = Launcher(config)
        launchers.append(launcher)
        return launcher

    yield start
    for launcher in launchers:
        if launcher.process.alive():
            launcher.stop()


class Traffic:
    """Steady closed-loop requests over a few models, counting any answer that is not 200."""

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url = url
        self.clients = clients
        self.failures: list[str] = []
        self.served = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "Traffic":
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]
        return self

    async def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            model = f"model-{(n + i) % 5}"
            i += 1
            try:
                async with self._session.get(self.url + "/", headers={MODEL: model}) as r:
                    body = await r.read()
                    if r.status != 200:
                        self.failures.append(f"{r.status} {body[:200]!r}")
                    else:
                        self.served += 1
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


async def test_scale_2_4_1_by_apply_under_traffic_fails_no_request(
    launcher_factory: Any,
) -> None:
    launcher = launcher_factory(num_replicas=2)
    await asyncio.to_thread(wait_for, lambda: len(launcher.healthy_ids()) == 2, 60, "2 up")
    async with Traffic(launcher.url) as traffic:
        for count in (4, 1):
            write_config(launcher.config, num_replicas=count)
            result = await asyncio.to_thread(
                cli, "apply", str(launcher.config), cwd=launcher.config.parent
            )
            assert result.returncode == 0, result.stdout + result.stderr
            await asyncio.to_thread(
                wait_for, lambda c=count: len(launcher.healthy_ids()) == c, 60, f"{count} up"
            )
            served = traffic.served
            await asyncio.to_thread(
                wait_for, lambda s=served: traffic.served > s + 20, 30, "traffic flowing"
            )
    assert traffic.failures == []
    assert traffic.served > 100
    assert launcher.healthy_ids() == {"replica-1"}
    assert launcher.stop() == 0


async def test_kill_9_under_traffic_the_launcher_restarts_the_replica(
    launcher_factory: Any,
) -> None:
    launcher = launcher_factory(num_replicas=2)
    await asyncio.to_thread(wait_for, lambda: len(launcher.healthy_ids()) == 2, 60, "2 up")
    async with aiohttp.ClientSession() as session:
        before = {r["replica_id"]: r for r in (await launcher.status(session))["replicas"]}
    pid_line = re.compile(r"replica-2 listening on (\S+)")
    assert any(pid_line.search(line) for line in launcher.process.lines)
    victim_url = before["replica-2"]["url"]
    async with Traffic(launcher.url) as traffic:
        pids = pids_running("--replica-id\0replica-2\0", parent=launcher.process.pid)
        assert pids, "replica-2's process not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

        def rejoined() -> bool:
            import json
            import urllib.request

            with urllib.request.urlopen(launcher.url + "/-/status", timeout=10) as response:
                replicas = json.load(response)["replicas"]
            return any(
                r["replica_id"] == "replica-2"
                and r["state"] == "healthy"
                and r["url"] != victim_url
                for r in replicas
            )

        await asyncio.to_thread(wait_for, rejoined, 60, "replica-2 restarted and rejoined")
    assert traffic.failures == []
    assert traffic.served > 50


async def test_the_bundled_example_answers_predictions(tmp_path: Path) -> None:
    bundled = yaml.safe_load((ROOT / "examples" / "default.yaml").read_text())
    bundled["router"]["port"] = 0
    bundled["deployment"]["num_replicas"] = 2
    bundled["deployment"]["init_kwargs"]["model_dir"] = str(tmp_path / "models")
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(bundled))
    launcher = Launcher(config)
    try:
        await asyncio.to_thread(wait_for, lambda: len(launcher.healthy_ids()) == 2, 60, "up")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                launcher.url + "/predict",
                headers={MODEL: "tenant-01"},
                json={"features": {"temperature": 21.5, "hour": 14}},
            ) as response:
                assert response.status == 200
                assert response.headers["x-modelplex-replica"].startswith("replica-")
                answer = await response.json()
            assert answer["model"] == "tenant-01"
            assert isinstance(answer["prediction"], float)
        status = cli("status", "--url", launcher.url, cwd=tmp_path)
        assert status.returncode == 0
        assert "replica-1" in status.stdout
        assert "tenant-01" in status.stdout
    finally:
        assert launcher.stop() == 0


async def test_an_admin_verb_gets_the_secret_from_its_launcher(launcher_factory: Any) -> None:
    launcher = launcher_factory(num_replicas=1)
    await asyncio.to_thread(wait_for, lambda: len(launcher.healthy_ids()) == 1, 60, "1 up")
    environment = env()
    environment.pop("MODELPLEX_SECRET", None)
    environment.pop("MODELPLEX_SECRET_FILE", None)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "router.launch",
            "preload",
            "warm-me",
            "--json",
            "--url",
            launcher.url,
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "warm-me"
