"""Several routers found by DNS (issue 12): two real routers on one port, one on 127.0.0.1 and
one on [::1], and one real replica started with `--router-dns http://localhost:PORT`. Each
router must come to show the replica healthy: the one on each address `localhost` has, and the
one on an address added to `localhost` while the replica runs.

The names are resolved by the system resolver (glibc reading /etc/hosts, through the loop's
getaddrinfo), nothing injected. This machine's /etc/hosts may give `localhost` one address only,
so the replica runs in a private mount namespace (`unshare --mount`, as root) where /etc/hosts
is a file this test writes and rewrites; the routers and the network stay the machine's own.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.addresses import reachable_url
from common.auth import authorization_value
from router.launch import ChildProcess, LocalCluster
from router.launch._launcher import child_environment

from polling import until

REPO = Path(__file__).resolve().parents[2]
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
QUICK_DEPLOYMENT = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 2.0}
STARTUP_S = 60.0  # a deadline for processes to start, not a speed claim
ROUTER_ARGV = (sys.executable, "-m", "router", "--config")
BIND_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'


def private_hosts_unavailable(probe: Path) -> str | None:
    """Why a process cannot be given its own /etc/hosts here, or None when it can."""
    if os.geteuid() != 0:
        return "a private /etc/hosts (unshare --mount) needs root"
    if not os.access(UNSHARE, os.X_OK):
        return f"no `unshare` command at {UNSHARE}"
    probe.write_text("127.0.0.1 localhost\n::1 localhost\n")
    check = [UNSHARE, "--mount", "sh", "-c", BIND_HOSTS, str(probe), "true"]
    done = subprocess.run(check, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"cannot bind-mount a private /etc/hosts: {done.stderr.strip()}"
    return None


def free_port_on_both_loopbacks() -> int:
    """A port free on 127.0.0.1 and on ::1 (bound on both, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET) as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind(("127.0.0.1", 0))
            port: int = v4.getsockname()[1]
            try:
                v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def healthy_replicas(router_url: str, secret: str) -> list[str]:
    request = urllib.request.Request(
        router_url + "/-/status", headers={"Authorization": authorization_value(secret)}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status = json.load(response)
    return [r["replica_id"] for r in status["replicas"] if r["state"] == "healthy"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster's config, secret and environment; the test starts its processes."""
    cluster = LocalCluster(tmp_path, num_replicas=1, deployment=QUICK_DEPLOYMENT)
    yield cluster
    cluster.close()


async def test_a_replica_reports_to_every_router_its_router_name_resolves_to(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    hosts = tmp_path / "hosts"
    why_not = private_hosts_unavailable(hosts)
    if why_not is not None:
        pytest.skip(why_not)
    hosts.write_text("127.0.0.1 localhost\n")  # ::1 comes later
    port = free_port_on_both_loopbacks()
    env = child_environment(cluster.secret, cluster.workdir, REPO)
    router_v4 = cluster.start_router(port=port)
    router_v6 = ChildProcess(
        "router-ipv6",
        [*ROUTER_ARGV, str(cluster.config_path), "--host", "::1", "--port", str(port)],
        env=env,
        cwd=cluster.workdir,
    )
    try:
        v4_url = reachable_url(router_v4.url(STARTUP_S))
        v6_url = reachable_url(router_v6.url(STARTUP_S))
        assert (v4_url, v6_url) == (f"http://127.0.0.1:{port}", f"http://[::1]:{port}")
        replica = ChildProcess(
            "replica-1",
            [
                *(UNSHARE, "--mount", "sh", "-c", BIND_HOSTS, str(hosts)),
                *(sys.executable, "-m", "replica", "--config", str(cluster.config_path)),
                *("--replica-id", "replica-1", "--router-dns", f"http://localhost:{port}"),
                *("--router-dns-interval", "0.2"),
            ],
            env=env,
            cwd=cluster.workdir,
        )
        cluster.replicas["replica-1"] = replica  # stopped by the fixture
        replica.url(STARTUP_S)

        async def shown_healthy(router_url: str, what: str) -> None:
            try:
                await until(
                    lambda: healthy_replicas(router_url, cluster.secret) == ["replica-1"],
                    what,
                    timeout_s=STARTUP_S,
                )
            except AssertionError as error:
                processes = (router_v4, router_v6, replica)
                logs = "\n".join(f"--- {p.name}\n{p.output(30)}" for p in processes)
                raise AssertionError(f"{error}\n{logs}") from None

        await shown_healthy(v4_url, "the router on 127.0.0.1 to show the replica healthy")
        assert healthy_replicas(v6_url, cluster.secret) == []  # localhost is not ::1 yet

        hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
        await shown_healthy(v6_url, "the router on ::1 to show the replica healthy")
        assert healthy_replicas(v4_url, cluster.secret) == ["replica-1"]
        assert replica.alive()
    finally:
        router_v6.stop()
