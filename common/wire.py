"""Wire messages on the state channel: replica snapshots to the router, error replies back.

Every frame is one msgpack map carrying the wire version `"v"` and a `"type"`. A replica sends
`"snapshot"` frames: its whole cache state, models as compact `[model_id, idle_s, in_use]`
arrays in LRU order. The router may answer a frame it rejects with an `"error"` frame.

Invariants:
- Decoding is strict and total: a frame is accepted only if it has every required field and no
  field besides the optional ones, each of the expected type and range; anything else raises
  `WireError` with a message naming the problem, and no other exception ever escapes a decode
  function.
- An optional field (`max_concurrent_loads`) is sent only when it has a value, so a frame
  without it is what an older replica sends and an older router accepts; absent or nil, it
  decodes as None.
- A frame longer than `MAX_FRAME_BYTES` is rejected before any unpacking.
- `decode_snapshot` returns only snapshots that `encode_snapshot` would accept, and
  `encode_snapshot` refuses (with `WireError`) any snapshot that `decode_snapshot` would
  reject, so a replica finds its own bug instead of having every report dropped.
- Model ids in snapshots are non-empty and pass `common.model_id.validate_model_id`; no id
  appears twice among `models`, nor twice among `loading`.
- Ages, not timestamps, cross the wire (`idle_s`), so the two clocks never need to agree.
- `hits` (optional, one number per entry of `models`, in the same order) is how often each
  model was asked for, decayed by time on the replica: every router reads the same worth of
  a resident model from it, whatever share of the traffic it saw itself.

Validation uses plain `type(...) is` checks on purpose: the router decodes thousands of
snapshots a second in a large cluster.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from common.model_id import InvalidModelId, validate_model_id

__all__ = [
    "CHANNEL_PATH",
    "MAX_FAILURE_MESSAGE_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_LOAD_FAILURES",
    "MAX_MODELS_PER_REPORT",
    "MAX_NAME_BYTES",
    "REPORT_PATH",
    "UNLIMITED_CAPACITY",
    "WIRE_VERSION",
    "ErrorReply",
    "LoadFailure",
    "ModelEntry",
    "ReplicaSnapshot",
    "WireError",
    "decode_error",
    "decode_snapshot",
    "encode_error",
    "encode_snapshot",
]

WIRE_VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_MODELS_PER_REPORT = 100_000
MAX_NAME_BYTES = 256
"""Limit for `replica_id`, `incarnation` and an error reply's `code`, in UTF-8 bytes."""
UNLIMITED_CAPACITY = -1
"""The `capacity` of a replica with no limit on resident models (the one definition of it)."""
CHANNEL_PATH = "/-/replicas/channel"
"""The router's WebSocket a replica streams its reports on."""
REPORT_PATH = "/-/replicas/report"
"""The router's POST endpoint for a single report (replicas that cannot hold a channel)."""

_SNAPSHOT = "snapshot"
_ERROR = "error"
_SNAPSHOT_FIELDS = frozenset(
    {
        "v",
        "type",
        "replica_id",
        "incarnation",
        "sequence",
        "url",
        "capacity",
        "models",
        "loading",
        "in_flight",
        "max_ongoing_requests",
        "draining",
        "load_ms_avg",
    }
)
_OPTIONAL_SNAPSHOT_FIELDS = frozenset({"max_concurrent_loads", "load_failures", "hits"})
MAX_FAILURE_MESSAGE_CHARS = 500
"""A load failure's message is cut to this many characters."""
MAX_LOAD_FAILURES = 64
"""The most load failures one report carries (the most recent)."""
_ERROR_FIELDS = frozenset({"v", "type", "code", "message"})
_MAX_MAP_LEN = 32
_URL_SCHEMES = ("http://", "https://")
_FRAME_LIMIT = f"the limit is {MAX_FRAME_BYTES}"


class WireError(ValueError):
    """A frame (or a message about to become one) breaks the wire format."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelEntry:
    """One model resident on a replica."""

    model_id: str
    idle_s: float
    """Seconds since the model was last used (>= 0), measured on the replica."""
    in_use: int
    """Requests currently holding (pinning) the model, >= 0."""
    hits: float = 0.0
    """How often it was asked for (decayed by time; the router's count seeds a new load)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadFailure:
    """A model load that failed on the replica recently."""

    model_id: str
    message: str
    """The loader's error, e.g. "FileNotFoundError: /models/a.bin" (at most 500 characters)."""
    age_s: float
    """Seconds since it failed (>= 0), measured on the replica."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaSnapshot:
    """A replica's whole state at one moment, as it reports it to every router."""

    replica_id: str
    """Stable name given by the launcher, e.g. "replica-3"."""
    incarnation: str
    """Random per process start: a restarted replica is a new incarnation."""
    sequence: int
    """Strictly increasing within an incarnation, >= 0."""
    url: str
    """Where the router reaches the replica: http://host:port or https://host:port."""
    capacity: int
    """`max_num_models_per_replica`; `UNLIMITED_CAPACITY` (-1) or >= 1."""
    models: tuple[ModelEntry, ...]
    """Resident models in LRU order: least recently used first."""
    loading: tuple[str, ...]
    """Ids of the models being loaded now."""
    in_flight: int
    """Requests being served now, >= 0."""
    max_ongoing_requests: int
    """Requests the replica accepts at once, >= 1."""
    draining: bool
    """True once the replica takes no new requests."""
    load_ms_avg: float | None = None
    """Recent mean model-load time in milliseconds, if the replica has loaded any."""
    max_concurrent_loads: int | None = None
    """Loads the replica runs at once (>= 1); None: as many as it has model slots."""
    load_failures: tuple[LoadFailure, ...] = ()
    """Loads that failed recently, one per model (the latest), at most `MAX_LOAD_FAILURES`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorReply:
    """Why the router rejected a frame on the state channel."""

    code: str
    """Stable, machine-readable reason, e.g. "bad_frame"."""
    message: str
    """Human-readable detail."""


def encode_snapshot(snapshot: ReplicaSnapshot) -> bytes:
    """Return the frame for `snapshot`; raise `WireError` if the router would reject it."""
    payload: dict[str, Any] = {
        "v": WIRE_VERSION,
        "type": _SNAPSHOT,
        "replica_id": snapshot.replica_id,
        "incarnation": snapshot.incarnation,
        "sequence": snapshot.sequence,
        "url": snapshot.url,
        "capacity": snapshot.capacity,
        "models": [[m.model_id, m.idle_s, m.in_use] for m in snapshot.models],
        "loading": list(snapshot.loading),
        "in_flight": snapshot.in_flight,
        "max_ongoing_requests": snapshot.max_ongoing_requests,
        "draining": snapshot.draining,
        "load_ms_avg": snapshot.load_ms_avg,
    }
    if snapshot.max_concurrent_loads is not None:
        payload["max_concurrent_loads"] = snapshot.max_concurrent_loads
    if any(m.hits for m in snapshot.models):
        payload["hits"] = [m.hits for m in snapshot.models]
    if snapshot.load_failures:
        payload["load_failures"] = [
            [f.model_id, f.message, f.age_s] for f in snapshot.load_failures
        ]
    _snapshot_from_payload(payload)
    return _pack(payload)


def decode_snapshot(frame: bytes) -> ReplicaSnapshot:
    """Return the snapshot a replica sent; raise `WireError` for any malformed frame."""
    return _snapshot_from_payload(_unpack(frame, _SNAPSHOT, reader="router"))


def encode_error(code: str, message: str) -> bytes:
    """Return an error frame, with which the router answers a frame it rejected."""
    payload = {"v": WIRE_VERSION, "type": _ERROR, "code": code, "message": message}
    _error_from_payload(payload)
    return _pack(payload)


def decode_error(frame: bytes) -> ErrorReply:
    """Return the error the router sent; raise `WireError` for any malformed frame."""
    return _error_from_payload(_unpack(frame, _ERROR, reader="replica"))


def _pack(payload: dict[str, Any]) -> bytes:
    try:
        frame = msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise WireError(f"cannot encode {payload['type']} frame: {error}") from None
    if len(frame) > MAX_FRAME_BYTES:
        raise WireError(f"{payload['type']} frame would be {len(frame)} bytes; {_FRAME_LIMIT}")
    return frame


def _unpack(frame: bytes, expected_type: str, *, reader: str) -> dict[Any, Any]:
    if type(frame) is not bytes:
        raise WireError(f"a frame must be bytes, not {type(frame).__name__}")
    if len(frame) > MAX_FRAME_BYTES:
        raise WireError(f"frame is {len(frame)} bytes; {_FRAME_LIMIT}")
    try:
        payload = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_map_len=_MAX_MAP_LEN,
            max_array_len=MAX_MODELS_PER_REPORT,
        )
    except Exception as error:
        detail = str(error) or type(error).__name__
        raise WireError(f"frame is not valid msgpack: {detail}") from None
    if type(payload) is not dict:
        raise WireError(f"frame must be a msgpack map, not {_kind(payload)}")
    if "v" not in payload:
        raise WireError("frame has no wire version field 'v'")
    version = payload["v"]
    if type(version) is not int:
        raise WireError(f"field 'v' must be an integer, not {_kind(version)}")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version}; this {reader} speaks {WIRE_VERSION}")
    frame_type = payload.get("type")
    if frame_type != expected_type:
        raise WireError(f"expected frame type {expected_type!r}, got {_preview(frame_type)}")
    return payload


def _check_fields(
    payload: dict[Any, Any], required: frozenset[str], optional: frozenset[str] = frozenset()
) -> None:
    keys = payload.keys()
    if keys == required:
        return
    missing = required - keys
    if missing:
        raise WireError(f"{payload['type']} frame is missing field {min(missing)!r}")
    extra = keys - required - optional
    if extra:
        raise WireError(f"{payload['type']} frame has unexpected field {min(extra, key=repr)!r}")


def _snapshot_from_payload(payload: dict[Any, Any]) -> ReplicaSnapshot:
    _check_fields(payload, _SNAPSHOT_FIELDS, _OPTIONAL_SNAPSHOT_FIELDS)
    url = _text(payload, "url")
    if not url.startswith(_URL_SCHEMES) or url in _URL_SCHEMES or not _is_token(url):
        raise WireError(f"field 'url' must be an http:// or https:// URL, got {_preview(url)}")
    capacity = _integer(payload, "capacity", UNLIMITED_CAPACITY)
    if capacity == 0:
        raise WireError("field 'capacity' must be -1 (unlimited) or >= 1, got 0")
    draining = payload["draining"]
    if type(draining) is not bool:
        raise WireError(f"field 'draining' must be a boolean, not {_kind(draining)}")
    load_ms_avg = payload["load_ms_avg"]
    if load_ms_avg is not None:
        load_ms_avg = _non_negative_float(load_ms_avg, "field 'load_ms_avg'")
    max_concurrent_loads = payload.get("max_concurrent_loads")
    if max_concurrent_loads is not None:
        max_concurrent_loads = _integer(payload, "max_concurrent_loads", 1)
    return ReplicaSnapshot(
        replica_id=_name(payload, "replica_id"),
        incarnation=_name(payload, "incarnation"),
        sequence=_integer(payload, "sequence", 0),
        url=url,
        capacity=capacity,
        models=_models(payload["models"], payload.get("hits")),
        loading=_loading(payload["loading"]),
        in_flight=_integer(payload, "in_flight", 0),
        max_ongoing_requests=_integer(payload, "max_ongoing_requests", 1),
        draining=draining,
        load_ms_avg=load_ms_avg,
        max_concurrent_loads=max_concurrent_loads,
        load_failures=_load_failures(payload.get("load_failures", [])),
    )


def _per_model(raw: Any, field: str, shape: str) -> Iterator[tuple[int, str, Any, Any]]:
    """The entries of an array of `[model_id, a, b]`, each model id checked and unique."""
    _check_list(raw, field)
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if type(item) is not list or len(item) != 3:
            raise WireError(f"{field}[{index}] must be an array {shape}")
        model_id, first, second = item
        _check_model_id(model_id, field, index, seen)
        seen.add(model_id)
        yield index, model_id, first, second


def _load_failures(raw: Any) -> tuple[LoadFailure, ...]:
    if type(raw) is list and len(raw) > MAX_LOAD_FAILURES:
        raise WireError(f"field 'load_failures' holds {len(raw)}; the limit is {MAX_LOAD_FAILURES}")
    failures: list[LoadFailure] = []
    for index, model_id, message, age_s in _per_model(
        raw, "load_failures", "[model_id, message, age_s]"
    ):
        if type(message) is not str or len(message) > MAX_FAILURE_MESSAGE_CHARS:
            raise WireError(
                f"load_failures[{index}]: message must be a string of at most "
                f"{MAX_FAILURE_MESSAGE_CHARS} characters"
            )
        age = _non_negative_float(age_s, f"load_failures[{index}]: age_s")
        failures.append(LoadFailure(model_id=model_id, message=message, age_s=age))
    return tuple(failures)


def _models(raw: Any, raw_hits: Any) -> tuple[ModelEntry, ...]:
    hits = _hits(raw_hits, len(raw) if type(raw) is list else 0)
    entries: list[ModelEntry] = []
    for index, model_id, idle_s, in_use in _per_model(raw, "models", "[model_id, idle_s, in_use]"):
        if type(in_use) is not int or in_use < 0:
            raise WireError(
                f"models[{index}]: in_use must be an integer >= 0, got {_preview(in_use)}"
            )
        if type(idle_s) is not float or not (0.0 <= idle_s < math.inf):
            idle_s = _non_negative_float(idle_s, f"models[{index}]: idle_s")
        entries.append(
            ModelEntry(
                model_id=model_id, idle_s=idle_s, in_use=in_use, hits=hits[index] if hits else 0.0
            )
        )
    return tuple(entries)


def _hits(raw: Any, models: int) -> list[float] | None:
    """The optional `hits` array: one finite number >= 0 per entry of `models`."""
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != models:
        raise WireError(f"field 'hits' must be an array of {models} numbers, one per model")
    return [
        h if type(h) is float and 0.0 <= h < math.inf else _non_negative_float(h, f"hits[{index}]")
        for index, h in enumerate(raw)
    ]


def _loading(raw: Any) -> tuple[str, ...]:
    _check_list(raw, "loading")
    seen: set[str] = set()
    for index, model_id in enumerate(raw):
        _check_model_id(model_id, "loading", index, seen)
        seen.add(model_id)
    return tuple(raw)


def _error_from_payload(payload: dict[Any, Any]) -> ErrorReply:
    _check_fields(payload, _ERROR_FIELDS)
    return ErrorReply(code=_name(payload, "code"), message=_text(payload, "message"))


def _check_list(raw: Any, field: str) -> None:
    if type(raw) is not list:
        raise WireError(f"field {field!r} must be an array, not {_kind(raw)}")
    if len(raw) > MAX_MODELS_PER_REPORT:
        raise WireError(
            f"field {field!r} holds {len(raw)} entries; the limit is {MAX_MODELS_PER_REPORT}"
        )


def _check_model_id(model_id: Any, field: str, index: int, seen: set[str]) -> None:
    if type(model_id) is not str:
        raise WireError(f"{field}[{index}]: model id must be a string, not {_kind(model_id)}")
    if not model_id:
        raise WireError(f"{field}[{index}]: model id is empty")
    if model_id in seen:
        raise WireError(f"{field}[{index}]: model id {model_id!r} appears twice in {field!r}")
    try:
        validate_model_id(model_id)
    except InvalidModelId as error:
        raise WireError(f"{field}[{index}]: {error}") from None


def _text(payload: dict[Any, Any], field: str) -> str:
    value = payload[field]
    if type(value) is not str:
        raise WireError(f"field {field!r} must be a string, not {_kind(value)}")
    return value


def _name(payload: dict[Any, Any], field: str) -> str:
    value = _text(payload, field)
    if not value:
        raise WireError(f"field {field!r} is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise WireError(f"field {field!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise WireError(f"field {field!r} is {size} bytes; the limit is {MAX_NAME_BYTES}")
    if not _is_token(value):
        raise WireError(f"field {field!r} must not contain spaces or unprintable characters")
    return value


def _integer(payload: dict[Any, Any], field: str, minimum: int) -> int:
    value = payload[field]
    if type(value) is not int:
        raise WireError(f"field {field!r} must be an integer, not {_kind(value)}")
    if value < minimum:
        raise WireError(f"field {field!r} must be >= {minimum}, got {value}")
    return value


def _non_negative_float(value: Any, where: str) -> float:
    number: float
    if type(value) is float:
        number = value
    elif type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            raise WireError(f"{where} is too large: {value}") from None
    else:
        raise WireError(f"{where} must be a number, not {_kind(value)}")
    if not (number >= 0.0 and math.isfinite(number)):
        raise WireError(f"{where} must be a finite number >= 0, got {number}")
    return number


def _is_token(value: str) -> bool:
    return value.isprintable() and " " not in value


_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 3  # a nested value is shown a few levels deep, never recursed whole
_PREVIEW.maxstring = 60
_PREVIEW.maxother = 60


def _preview(value: Any) -> str:
    try:
        text = _PREVIEW.repr(value)
    except (ValueError, RecursionError):  # an integer too long to print, say
        return f"a value of type {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
