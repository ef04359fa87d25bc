"""How the CLI finds and talks to a running launcher: its runtime directory and control port.

Layout, one directory per router port, private to the user:

    $XDG_RUNTIME_DIR/modelplex/<port>/   (or /tmp/modelplex-<uid>/<port>/), mode 0700
        launcher.json    pid, router URLs (shared, each router's own), control URL and token,
                         config path; mode 0600
        lock             flock'ed by the live launcher; a directory whose lock is free is stale
        config-<n>.yaml  the validated config of generation n, as router and replicas read it

The control port is an HTTP server on 127.0.0.1 (ephemeral port) that answers only requests
carrying `Authorization: Bearer <token>`:

    POST /apply  {"config": <dump_config data>, "source": path} -> the launcher's apply result
                 (409 `restart_required` for a change only a restart of the launcher can make)
    GET  /state  -> generations, progress and every replica the launcher runs
    GET  /secret -> {"secret": the cluster secret}, for the CLI's admin verbs (404 when the
                    launcher offers none)

Handing the cluster secret to a holder of the control token grants nothing new: the token
already lets it reconfigure the cluster (`/apply`), and both stay with this user (0600 files,
loopback). The CLI asks only to talk to this launcher's own router, and keeps it in memory.

Invariants:
- Directories are created 0700 and must belong to the user; files are written 0600 and appear
  whole (`os.replace`).
- A directory whose lock no process holds is stale: readers ignore its `launcher.json`, the
  next launcher removes it. Two launchers never share a directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from common.auth import authorization_value, generate_secret, is_authorized
from common.config import ClusterConfig, ConfigError, dump_config, parse_config
from common.errors import error_response
from common.serving import listening

__all__ = [
    "ControlServer",
    "LauncherInfo",
    "LauncherRunning",
    "RuntimeDir",
    "control_request",
    "find_launcher",
    "running_launchers",
    "runtime_base",
]

INFO_FILE = "launcher.json"
LOCK_FILE = "lock"

ApplyHandler = Callable[[ClusterConfig], Awaitable[dict[str, Any]]]
StateHandler = Callable[[], dict[str, Any]]
SecretHandler = Callable[[], str]


class LauncherRunning(RuntimeError):
    """Another live launcher already serves this router port."""


@dataclass(frozen=True, kw_only=True)
class LauncherInfo:
    """What `launcher.json` holds."""

    pid: int
    port: int
    router_url: str
    control_url: str
    token: str
    config_path: str
    router_urls: list[str] = field(default_factory=list)
    """Each router's own address (`router.count` > 1); empty: `router_url` is the only one."""

    @property
    def routers(self) -> list[str]:
        """Every router's own address; `[router_url]` with a single router."""
        return self.router_urls or [self.router_url]


def runtime_base() -> Path:
    """`$XDG_RUNTIME_DIR/modelplex`, or `/tmp/modelplex-<uid>` without one."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "modelplex"
    return Path(tempfile.gettempdir()) / f"modelplex-{os.getuid()}"


def _private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that the existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_info(path: Path) -> LauncherInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info = LauncherInfo(**data)
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid) else None


class RuntimeDir:
    """The launcher's private directory; see the module docstring for its layout.

    The launcher holds an exclusive `flock` on `<dir>/lock` while it runs: a directory whose
    lock can be taken belongs to no one and is swept away.
    """

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def claim(cls, port: int) -> RuntimeDir:
        """The directory for `port`, or a provisional one when the port is not known yet (0);
        `LauncherRunning` if a live launcher holds the port."""
        base = _private_dir(runtime_base())
        _sweep(base)
        if port == 0:
            path = Path(tempfile.mkdtemp(dir=base, prefix="starting-"))
        else:
            path = _private_dir(base / str(port))
        fd = _try_lock(path)
        if fd is None:
            live = _read_info(path / INFO_FILE)
            where = live.router_url if live is not None else f"port {port}"
            pid = f" (pid {live.pid})" if live is not None else ""
            raise LauncherRunning(f"a launcher{pid} already serves {where}")
        _clear(path)
        return cls(path, fd)

    def settle(self, port: int) -> None:
        """Move a provisional directory to its port's name once the router has one."""
        target = self.path.parent / str(port)
        if target == self.path:
            return
        if target.exists():  # left by a launcher that died; the port is ours now
            shutil.rmtree(target, ignore_errors=True)
        os.rename(self.path, target)
        self.path = target

    def config_path(self, generation: int) -> Path:
        return self.path / f"config-{generation}.yaml"

    def write_config(self, generation: int, config: ClusterConfig) -> Path:
        path = self.config_path(generation)
        header = f"# modelplex generation {generation}, validated from {config.source}\n"
        _write_private(path, header + yaml.safe_dump(dump_config(config), sort_keys=False))
        return path

    def write_info(self, info: LauncherInfo) -> None:
        _write_private(self.path / INFO_FILE, json.dumps(asdict(info), indent=2) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def _try_lock(path: Path) -> int | None:
    """An fd holding the directory's lock, or None when another process holds it."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _clear(path: Path) -> None:
    """Remove what a dead launcher left in `path`, keeping the lock file."""
    for child in path.iterdir():
        if child.name != LOCK_FILE:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()


def _sweep(base: Path) -> None:
    """Remove the directories of launchers that died without cleaning up."""
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            if not (child / LOCK_FILE).exists():
                continue  # being created, or not ours
            with contextlib.suppress(OSError):
                fd = _try_lock(child)
                if fd is not None:
                    shutil.rmtree(child, ignore_errors=True)
                    os.close(fd)


def running_launchers() -> list[LauncherInfo]:
    """Every live launcher of this user."""
    base = runtime_base()
    found = []
    with contextlib.suppress(OSError):
        for child in sorted(base.iterdir()):
            info = _read_info(child / INFO_FILE)
            if info is not None:
                found.append(info)
    return found


def find_launcher(*, port: int | None, config_path: str | None) -> LauncherInfo | None:
    """The launcher serving router `port`, else the one started from `config_path`."""
    launchers = running_launchers()
    for info in launchers:
        if port and info.port == port:
            return info
    if config_path is not None:
        wanted = os.path.realpath(config_path)
        for info in launchers:
            if os.path.realpath(info.config_path) == wanted:
                return info
    return None


async def control_request(
    info: LauncherInfo, method: str, path: str, body: object = None, *, timeout_s: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """One request to a launcher's control port: (HTTP status, JSON body)."""
    headers = {"Authorization": authorization_value(info.token)}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, info.control_url + path, json=body, headers=headers) as response,
    ):
        data = await response.json(content_type=None)
        return response.status, data if isinstance(data, dict) else {}


class ControlServer:
    """The launcher's control port: translates HTTP to `apply` and `state` calls and back."""

    def __init__(
        self, *, apply: ApplyHandler, state: StateHandler, secret: SecretHandler | None = None
    ) -> None:
        """`secret`: the cluster secret, for `GET /secret` (None: not offered)."""
        self.token = generate_secret()
        self.url = ""
        self._apply = apply
        self._state = state
        self._secret = secret
        self._serving = contextlib.AsyncExitStack()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/apply", self._handle_apply)
        app.router.add_get("/state", self._handle_state)
        app.router.add_get("/secret", self._handle_secret)
        port = await self._serving.enter_async_context(listening(app, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        await self._serving.aclose()

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not is_authorized(request.headers.get("Authorization"), self.token):
            return error_response(401, "unauthorized", "the launcher's control token is required")
        return await handler(request)

    async def _handle_apply(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "bad_request", "the body must be JSON")
        if not isinstance(body, dict) or "config" not in body:
            return error_response(
                400, "bad_request", 'the body must be {"config": ..., "source": ...}'
            )
        source = body.get("source")
        try:
            config = parse_config(body["config"], source=str(source or "<apply>"))
        except ConfigError as err:
            return error_response(400, "invalid_config", str(err), key=err.key)
        try:
            return web.json_response(await self._apply(config))
        except ConfigError as err:  # valid, but not for the cluster that runs
            return error_response(409, "restart_required", str(err), key=err.key)

    async def _handle_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._state())

    async def _handle_secret(self, request: web.Request) -> web.Response:
        if self._secret is None:
            return error_response(404, "not_offered", "this launcher does not hand out its secret")
        return web.json_response({"secret": self._secret()})
