"""The cluster config: the YAML file a user writes, parsed into frozen dataclasses.

This module owns the schema (which keys exist, their types, defaults and allowed values) and the
one place that checks them, so the router, the replicas and the CLI never see a half-valid config.

Invariants:
- A `ClusterConfig` returned by `parse_config` or `load_config` satisfies every rule below;
  constructing the dataclasses directly skips validation.
- The known keys of each section are the fields of its dataclass; every field has one `_Rule`.
- Nothing is coerced: a string is never read as a number, a bool is never an int. The one
  widening is int -> float where seconds are expected.
- `parse_config(dump_config(c)) == c` for every valid `c`.
- Every rejection is a `ConfigError` whose `.key` is the dotted path of the offending key.
- The files named in the `tls` section were readable, and each certificate matched its key,
  when the config was parsed (`common.tls` loads them); relative paths are taken from the config
  file's directory (`load_config`) and stored resolved.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import urllib.parse
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from common import tls as _tls

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "DeploymentConfig",
    "InternalTlsConfig",
    "PublicTlsConfig",
    "RouterConfig",
    "TlsConfig",
    "dump_config",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """An invalid config; `.key` is the dotted key path, '' when the whole file is at fault.

    `str(err)` reads like "deployment.num_replicas: must be an integer >= 0, got 'four'".
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """How the router listens and how long it lets a request wait."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port
    # Router processes `modelplex up` runs on this host. With more than one they all listen on
    # `port` (SO_REUSEPORT: the kernel spreads client connections across them, so one URL
    # serves and the request path uses several cores), and each also listens on a port of its
    # own (ephemeral) that replicas report to and status and admin calls use. Changing it
    # needs a restart of `modelplex up`: replicas learn their routers when they start.
    count: int = 1
    max_queued_requests: int = 1000  # waiting for a replica with room, a model slot or a loader
    queue_timeout_s: float = 30.0  # time in that queue before a 503
    request_timeout_s: float = 300.0  # end to end, before a 504
    # Retry a request the replica may have started on (its connection broke) on another
    # replica; idempotent methods (GET, PUT, DELETE, ...) are retried either way. A request
    # is never retried once part of its answer went to the client.
    retry_on_replica_failure: bool = True
    max_replay_body_bytes: int = 1048576  # bodies up to this size are kept for a retry
    max_request_body_bytes: int = 104857600  # larger bodies get 413, streamed ones too
    header_timeout_s: float = 10.0  # a request's head must arrive within this, or 408
    keepalive_timeout_s: float = 75.0  # an idle client connection is closed after this
    # Retries over the last 10 s stay within this share of the requests, plus a reserve of
    # retry_budget_min_per_s a second, so retries cannot multiply the load in an outage.
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_s: float = 10.0
    # A replica whose requests fail this many times in a row (refused, broken, timed out) is
    # taken out of routing, whatever its reports say, and probed with one request after a
    # cool-down that doubles with each failed probe (up to 30 s).
    breaker_failures: int = 5
    breaker_cooldown_s: float = 2.0
    # A model whose load fails on a replica is not placed there again for this long; once it
    # failed on max_load_failures replicas (or every one), its requests get 503 at once.
    load_failure_cooldown_s: float = 30.0
    max_load_failures: int = 3
    # One line per request on the "modelplex.access" logger: "text", "json" or "off".
    access_log: str = "text"
    # Where a request names its model: the header, the JSON body's top-level "model" field
    # (OpenAI-style; only the first 64 KiB are read to find it), or both (the header first).
    model_id_from: str = "header"
    # A rarely needed override: a fixed time, in model-load times, that a request for a cold
    # model may wait for a slot rather than evict a model asked for more often. null (the
    # default) lets the policy bound the wait by itself, to about one load time.
    popular_model_patience: float | None = None
    # Several routers: a Redis URL (redis://host:6379/0, rediss://... for TLS) where they
    # take a short lease on each cold placement, so a model asked for on every router at
    # the same instant is loaded once even while their views differ. null (the default): no
    # shared state; routers agree from the replicas' reports alone, which covers all but the
    # requests each sent in the last moments. Unreachable, each router decides on its own.
    placement_lease_url: str | None = None
    placement_lease_ttl_s: float = 0.5  # long enough for its placement to reach every router
    placement_lease_timeout_s: float = 0.05  # a claim unanswered by then: decide alone


@dataclass(frozen=True, kw_only=True)
class DeploymentConfig:
    """What the replicas run and how many of them; the timeouts govern their lifecycle."""

    import_path: str  # "package.module:ClassName"
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_replicas: int = 1
    max_num_models_per_replica: int | None = None  # None: the decorator's value; -1: no limit
    max_ongoing_requests: int = 8
    host: str = "127.0.0.1"  # where replicas bind
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0  # must exceed heartbeat_interval_s
    graceful_shutdown_timeout_s: float = 30.0
    model_load_timeout_s: float = 300.0  # a request's wait for a cache slot and the load
    # Loads one replica runs at once; the others keep their slot and wait their turn (FIFO).
    # None: as many as there are model slots. 1 for a loader that shares one disk or GPU.
    max_concurrent_loads: int | None = None


@dataclass(frozen=True, kw_only=True)
class PublicTlsConfig:
    """HTTPS on the router's listener: for clients, and for the replicas' state channels."""

    cert_file: str  # PEM: the router's certificate, then any intermediate ones
    key_file: str  # PEM: its private key, unencrypted
    # The CA certificates that replicas and modelplex's tools verify the router with; None:
    # the system's trust store (a certificate from a public CA).
    ca_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class InternalTlsConfig:
    """TLS between router and replicas: the replicas' listeners and the router's connections."""

    cert_file: str  # PEM: what replicas serve; names every replica's host or IP address
    key_file: str  # PEM: its private key, unencrypted
    ca_file: str  # the private CA: the router verifies replicas with it (and client certs)
    # Mutual TLS: the router and the replicas present cert_file as their client certificate,
    # and a replica, or the router's state channel, refuses a peer without one from ca_file.
    client_auth: bool = False


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Which hops speak TLS; a section left out (None) is plain HTTP."""

    public: PublicTlsConfig | None = None
    internal: InternalTlsConfig | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """A whole config file; `source` names where it came from, for messages."""

    router: RouterConfig = field(default_factory=RouterConfig)
    deployment: DeploymentConfig
    tls: TlsConfig = field(default_factory=TlsConfig)
    source: str = "<default>"


@dataclass(frozen=True)
class _Rule:
    """How one key is checked: `accept` returns the value as stored or raises TypeError,
    `check` tests the stored value, `describe` completes "must be ..." for both failures."""

    accept: Callable[[object], object]
    check: Callable[[Any], bool]
    describe: str


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    return float(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _str_keyed_mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TypeError
    return dict(value)


def _optional_seconds(value: object) -> float | None:
    return None if value is None else _seconds(value)


def _optional_integer(value: object) -> int | None:
    return None if value is None else _integer(value)


def _is_import_path(value: str) -> bool:
    module, colon, attribute = value.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    return bool(colon) and all(part.isidentifier() for part in parts)


def _is_redis_url(value: str) -> bool:
    """redis://[user:password@]host[:port][/db], rediss://... (TLS) or unix:///path."""
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # ValueError when it is not a port number
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path) and port is None
    db = parts.path.lstrip("/")
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname) and (db.isdigit() or not db)


def _count(minimum: int, maximum: float = math.inf) -> _Rule:
    bound = f">= {minimum}" if maximum == math.inf else f"from {minimum} to {maximum}"
    return _Rule(_integer, lambda v: minimum <= v <= maximum, f"an integer {bound}")


_POSITIVE_SECONDS = _Rule(_seconds, lambda v: 0 < v < math.inf, "a finite number of seconds > 0")
_HOST = _Rule(_string, lambda v: v != "", "a non-empty string")

_ROUTER_RULES: Mapping[str, _Rule] = {
    "host": _HOST,
    "port": _count(0, 65535),
    "count": _count(1, 64),
    "max_queued_requests": _count(0),
    "queue_timeout_s": _POSITIVE_SECONDS,
    "request_timeout_s": _POSITIVE_SECONDS,
    "retry_on_replica_failure": _Rule(_boolean, lambda v: True, "true or false"),
    "max_replay_body_bytes": _count(0),
    "max_request_body_bytes": _count(0),
    "header_timeout_s": _POSITIVE_SECONDS,
    "keepalive_timeout_s": _POSITIVE_SECONDS,
    "retry_budget_ratio": _Rule(_seconds, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "retry_budget_min_per_s": _Rule(
        _seconds, lambda v: 0 <= v < math.inf, "a finite number >= 0 (retries a second)"
    ),
    "breaker_failures": _count(1),
    "breaker_cooldown_s": _POSITIVE_SECONDS,
    "load_failure_cooldown_s": _POSITIVE_SECONDS,
    "max_load_failures": _count(1),
    "access_log": _Rule(_string, lambda v: v in ("text", "json", "off"), "text, json or off"),
    "model_id_from": _Rule(
        _string, lambda v: v in ("header", "json_body", "both"), "header, json_body or both"
    ),
    "popular_model_patience": _Rule(
        _optional_seconds,
        lambda v: v is None or 0 <= v < math.inf,
        "null (adaptive) or a finite number >= 0 (model-load times)",
    ),
    "placement_lease_url": _Rule(
        lambda v: None if v is None else _string(v),
        lambda v: v is None or _is_redis_url(v),
        "null (no lease) or a Redis URL: redis://host:port/db, rediss://... or unix://path",
    ),
    "placement_lease_ttl_s": _Rule(
        _seconds, lambda v: 0.05 <= v <= 60, "a number of seconds from 0.05 to 60"
    ),
    "placement_lease_timeout_s": _Rule(
        _seconds, lambda v: 0.001 <= v <= 10, "a number of seconds from 0.001 to 10"
    ),
}

_DEPLOYMENT_RULES: Mapping[str, _Rule] = {
    "import_path": _Rule(_string, _is_import_path, "an import path like 'package.module:Class'"),
    "init_kwargs": _Rule(_str_keyed_mapping, lambda v: True, "a mapping with string keys"),
    "num_replicas": _count(0),
    "max_num_models_per_replica": _Rule(
        _optional_integer,
        lambda v: v is None or v == -1 or v > 0,
        "null (the decorator's value), -1 (no limit) or an integer > 0",
    ),
    "max_ongoing_requests": _count(1),
    "host": _HOST,
    "heartbeat_interval_s": _POSITIVE_SECONDS,
    "heartbeat_timeout_s": _POSITIVE_SECONDS,
    "graceful_shutdown_timeout_s": _POSITIVE_SECONDS,
    "model_load_timeout_s": _POSITIVE_SECONDS,
    "max_concurrent_loads": _Rule(
        _optional_integer,
        lambda v: v is None or v >= 1,
        "null (as many as there are model slots) or an integer >= 1",
    ),
}

_SECTIONS: Mapping[str, tuple[type[Any], Mapping[str, _Rule]]] = {
    "router": (RouterConfig, _ROUTER_RULES),
    "deployment": (DeploymentConfig, _DEPLOYMENT_RULES),
}

_PEM_FILE = _Rule(_string, lambda v: v != "", "the path of a PEM file")
_PUBLIC_TLS_RULES: Mapping[str, _Rule] = {
    "cert_file": _PEM_FILE,
    "key_file": _PEM_FILE,
    "ca_file": _Rule(
        lambda v: None if v is None else _string(v),
        lambda v: v != "",
        "null (the system's trust store) or the path of a PEM file",
    ),
}
_INTERNAL_TLS_RULES: Mapping[str, _Rule] = {
    "cert_file": _PEM_FILE,
    "key_file": _PEM_FILE,
    "ca_file": _PEM_FILE,
    "client_auth": _Rule(_boolean, lambda v: True, "true or false"),
}
# The `tls` section holds subsections, each null or a mapping: name -> (class, rules).
_TLS_SUBSECTIONS: Mapping[str, tuple[type[Any], Mapping[str, _Rule]]] = {
    "public": (PublicTlsConfig, _PUBLIC_TLS_RULES),
    "internal": (InternalTlsConfig, _INTERNAL_TLS_RULES),
}


def _shown(value: object) -> str:
    """A short, safe rendering of a rejected value (whatever it is: deep, or a huge integer)."""
    try:
        return reprlib.repr(value)
    except (ValueError, RecursionError):
        return f"a value of type {type(value).__name__}"


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _reject_unknown_keys(path: str, given: Mapping[Any, object], known: list[str]) -> None:
    for key in given:
        if key in known:
            continue
        dotted = f"{path}.{key}" if path else str(key)
        close = difflib.get_close_matches(str(key), known, n=1)
        home = [name for name, (cls, _) in _SECTIONS.items() if key in _field_names(cls)]
        if home:
            hint = f"it belongs in the {' or '.join(map(repr, home))} section"
        elif close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = f"known keys: {', '.join(known)}"
        raise ConfigError(dotted, f"unknown key; {hint}")


def _parse_section(path: str, given: object, cls: type[Any], rules: Mapping[str, _Rule]) -> Any:
    if not isinstance(given, Mapping):
        raise ConfigError(path, f"must be a mapping, got {_shown(given)}")
    _reject_unknown_keys(path, given, _field_names(cls))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        rule = rules[f.name]
        if f.name not in given:
            if _is_required(f):
                raise ConfigError(f"{path}.{f.name}", f"required; must be {rule.describe}")
            continue
        try:
            accepted = rule.accept(given[f.name])
            valid = rule.check(accepted)
        except TypeError:
            valid = False
        if not valid:
            got = _shown(given[f.name])
            raise ConfigError(f"{path}.{f.name}", f"must be {rule.describe}, got {got}")
        values[f.name] = accepted
    return cls(**values)


def _parse_tls(given: object, base_dir: str | None) -> TlsConfig:
    """The `tls` section, its files' paths joined to `base_dir`, every file loaded once."""
    if not isinstance(given, Mapping):
        raise ConfigError("tls", f"must be a mapping, got {_shown(given)}")
    _reject_unknown_keys("tls", given, list(_TLS_SUBSECTIONS))
    parts: dict[str, Any] = {}
    for name, (cls, rules) in _TLS_SUBSECTIONS.items():
        if given.get(name) is None:
            continue
        section = _parse_section(f"tls.{name}", given[name], cls, rules)
        if base_dir is not None:
            paths = {
                key: os.path.join(base_dir, value)
                for key, value in dataclasses.asdict(section).items()
                if key.endswith("_file") and isinstance(value, str)
            }
            section = dataclasses.replace(section, **paths)
        parts[name] = section
    config = TlsConfig(**parts)
    if config.internal is not None and config.internal.client_auth and config.public is None:
        raise ConfigError(
            "tls.internal.client_auth",
            "needs a tls.public section: replicas send their client certificates on the state "
            "channel, which reaches the router's listener",
        )
    try:
        _tls.check_files(config)
    except _tls.TlsFileError as err:
        raise ConfigError(err.key, err.problem) from None
    return config


def parse_config(
    data: object, *, source: str = "<config>", base_dir: str | None = None
) -> ClusterConfig:
    """Validate already-loaded YAML (or JSON) data; raise `ConfigError` on the first problem.

    Relative paths in the `tls` section are taken from `base_dir` (None: the working
    directory, kept relative)."""
    if data is None:
        raise ConfigError("", f"{source}: the config is empty; it needs a 'deployment' section")
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise ConfigError("", f"{source}: the top level must be a mapping of sections, got {got}")
    section_fields = [f for f in dataclasses.fields(ClusterConfig) if f.name in _SECTIONS]
    _reject_unknown_keys("", data, [*(f.name for f in section_fields), "tls"])
    sections: dict[str, Any] = {}
    for f in section_fields:
        if f.name in data:
            sections[f.name] = _parse_section(f.name, data[f.name], *_SECTIONS[f.name])
        elif _is_required(f):
            raise ConfigError(f.name, "required section is missing")
    deployment: DeploymentConfig = sections["deployment"]
    if deployment.heartbeat_timeout_s <= deployment.heartbeat_interval_s:
        raise ConfigError(
            "deployment.heartbeat_timeout_s",
            f"must be greater than heartbeat_interval_s ({deployment.heartbeat_interval_s}), "
            f"got {deployment.heartbeat_timeout_s}",
        )
    if data.get("tls") is not None:
        sections["tls"] = _parse_tls(data["tls"], base_dir)
    return ClusterConfig(**sections, source=source)


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a YAML config file; unreadable files and bad YAML are `ConfigError`s."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError("", f"{name}: no such config file") from None
    except OSError as err:
        raise ConfigError("", f"{name}: cannot read config file: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError("", f"{name}: config file is not UTF-8: {err.reason}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "syntax error"
        raise ConfigError("", f"{name}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{name}: invalid YAML: {err}") from None
    except RecursionError:
        raise ConfigError("", f"{name}: invalid YAML: nested too deeply") from None
    except ValueError as err:  # e.g. an integer too long to convert
        raise ConfigError("", f"{name}: invalid YAML: {err}") from None
    return parse_config(data, source=name, base_dir=os.path.dirname(os.path.abspath(name)))


def dump_config(config: ClusterConfig) -> dict[str, Any]:
    """The config as plain data that `parse_config` accepts back; `source` is not included,
    nor a `tls` section that is all plain HTTP."""
    data = {name: dataclasses.asdict(getattr(config, name)) for name in _SECTIONS}
    if config.tls != TlsConfig():
        data["tls"] = dataclasses.asdict(config.tls)
    return data
