"""Separate hosts on one machine: each a Linux network namespace, joined to the root namespace
(where the router runs) by a veth pair on a /30 of its own.

Host i of a `Hosts` gets `10.213.B.4i/30`: the root namespace's end of the veth is `.4i+1` (the
router's address as that host sees it), the host's end `.4i+2`. `B` is picked from the pid and
skipped while the root namespace already has an address in `10.213.B.0/24`; namespace and link
names carry the pid and a per-process counter, so concurrent runs do not collide. `close()`
deletes every namespace and link it made, also after a failure half-way through `__init__`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "DEPLOYMENT",
    "HEARTBEAT_TIMEOUT_S",
    "IP",
    "LIVENESS_S",
    "MARGIN_S",
    "MODEL",
    "MODELS",
    "REQUEST_TIMEOUT_S",
    "WORKERS",
    "Host",
    "Hosts",
    "unavailable",
]

IP = shutil.which("ip") or "/usr/sbin/ip"

# What the multi-host tests run on those hosts, and how long they give a change.
MODEL = "serve_multiplexed_model_id"
MODELS = [f"model-{n}" for n in range(6)]
WORKERS = 4
HEARTBEAT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 20.0
DEPLOYMENT = {
    "max_num_models_per_replica": len(MODELS),  # nothing is evicted: what a host held, it holds
    "max_ongoing_requests": 8,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
    "graceful_shutdown_timeout_s": 5.0,
}
LIVENESS_S = 30.0
"""How long a change may take before the test fails: generous, never a speed claim."""
MARGIN_S = 10.0
"""Beyond heartbeat_timeout_s, how long a cut host may stay in routing: generous too."""

_RUNS = itertools.count()


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.access(IP, os.X_OK):
        return f"no `ip` command (iproute2) at {IP}"
    probe = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def ip(*args: str) -> None:
    """Run `ip args...`; CalledProcessError (with what it printed) if it fails."""
    subprocess.run([IP, *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    """One namespace: `address` is its end of the veth, `gateway` the root namespace's end."""

    namespace: str
    root_link: str
    address: str
    gateway: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """A command prefix that runs a program on this host."""
        return (IP, "netns", "exec", self.namespace)

    def cut(self) -> None:
        """Take the root namespace's end of the link down: the router loses its route to the
        host and the host's end loses its carrier, so nothing passes either way."""
        ip("link", "set", self.root_link, "down")

    def restore(self) -> None:
        """Bring the link back up (the kernel restores the route to the host)."""
        ip("link", "set", self.root_link, "up")


class Hosts:
    """`count` hosts, made at once; a context manager that deletes them."""

    def __init__(self, count: int) -> None:
        self._tag = f"mpx{os.getpid()}{next(_RUNS)}"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []
        try:
            subnet = _free_subnet()
            for number in range(count):
                self.hosts.append(self._make(number, subnet))
        except BaseException:
            self.close()
            raise

    def _make(self, number: int, subnet: ipaddress.IPv4Network) -> Host:
        namespace, root_link, host_link = (f"{self._tag}{end}{number}" for end in "hrn")
        base = subnet.network_address + 4 * number
        gateway, address = str(base + 1), str(base + 2)
        ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        ip("link", "add", root_link, "type", "veth", "peer", "name", host_link)
        self._links.append(root_link)
        ip("link", "set", host_link, "netns", namespace)
        ip("addr", "add", f"{gateway}/30", "dev", root_link)
        ip("link", "set", root_link, "up")
        ip("-n", namespace, "addr", "add", f"{address}/30", "dev", host_link)
        ip("-n", namespace, "link", "set", host_link, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return Host(namespace, root_link, address, gateway)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Delete every link and namespace made (deleting one end of a veth deletes both).
        Idempotent; runs every deletion even when one fails."""
        for name in self._links:
            subprocess.run([IP, "link", "del", name], capture_output=True, check=False)
        for name in self._namespaces:
            subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)
        self._links.clear()
        self._namespaces.clear()


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.B.0/24 with no address in the root namespace yet, starting from the pid."""
    listed = subprocess.run(
        [IP, "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    used = {
        ipaddress.ip_interface(word).network.supernet(new_prefix=24)
        for line in listed.splitlines()
        for word in line.split()
        if word.startswith("10.213.")
    }
    for offset in range(256):
        subnet = ipaddress.IPv4Network(f"10.213.{(os.getpid() + offset) % 256}.0/24")
        if subnet not in used:
            return subnet
    raise RuntimeError("every 10.213.B.0/24 is in use in the root namespace")
