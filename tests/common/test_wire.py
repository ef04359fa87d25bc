import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.model_id import MAX_MODEL_ID_BYTES
from common.wire import (
    MAX_FRAME_BYTES,
    MAX_MODELS_PER_REPORT,
    WIRE_VERSION,
    ErrorReply,
    ModelEntry,
    ReplicaSnapshot,
    WireError,
    decode_error,
    decode_snapshot,
    encode_error,
    encode_snapshot,
)


def snapshot(**changes: Any) -> ReplicaSnapshot:
    base = ReplicaSnapshot(
        replica_id="replica-3",
        incarnation="5f0c9a",
        sequence=7,
        url="http://127.0.0.1:8001",
        capacity=3,
        models=(
            ModelEntry(model_id="cold", idle_s=30.5, in_use=0),
            ModelEntry(model_id="warm", idle_s=2, in_use=1),
        ),
        loading=("next",),
        in_flight=1,
        max_ongoing_requests=100,
        draining=False,
        load_ms_avg=1500.0,
    )
    return dataclasses.replace(base, **changes)


def payload(**changes: Any) -> dict[str, Any]:
    """The unpacked form of `snapshot()`, with fields replaced or (given `DROP`) removed."""
    result: dict[str, Any] = msgpack.unpackb(encode_snapshot(snapshot()))
    for key, value in changes.items():
        if value is DROP:
            del result[key]
        else:
            result[key] = value
    return result


DROP = object()
_T = TypeVar("_T")


def frame_of(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rejected(obj: Any, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_snapshot(frame_of(obj))


# --- round trip and layout ---------------------------------------------------------------------


def test_a_snapshot_survives_the_round_trip() -> None:
    original = snapshot()
    assert decode_snapshot(encode_snapshot(original)) == original


def test_the_frame_is_a_versioned_map_with_compact_models() -> None:
    raw = msgpack.unpackb(encode_snapshot(snapshot()))
    assert raw["v"] == WIRE_VERSION == 1
    assert raw["type"] == "snapshot"
    assert raw["models"] == [["cold", 30.5, 0], ["warm", 2, 1]]
    assert raw["loading"] == ["next"]


def test_lru_order_is_kept() -> None:
    models = tuple(ModelEntry(model_id=f"m{i}", idle_s=10.0 - i, in_use=0) for i in range(10))
    decoded = decode_snapshot(encode_snapshot(snapshot(models=models)))
    assert [m.model_id for m in decoded.models] == [f"m{i}" for i in range(10)]


def test_integers_are_accepted_for_float_fields_and_become_floats() -> None:
    decoded = decode_snapshot(frame_of(payload(models=[["a", 3, 0]], load_ms_avg=12)))
    assert decoded.models[0].idle_s == 3.0
    assert type(decoded.models[0].idle_s) is float
    assert decoded.load_ms_avg == 12.0
    assert type(decoded.load_ms_avg) is float


def test_optional_and_boundary_values_round_trip() -> None:
    original = snapshot(
        capacity=-1,
        models=(),
        loading=(),
        in_flight=0,
        sequence=0,
        max_ongoing_requests=1,
        draining=True,
        load_ms_avg=None,
        url="https://replica.internal:443",
    )
    assert decode_snapshot(encode_snapshot(original)) == original


def test_a_load_limit_survives_the_round_trip() -> None:
    limited = snapshot(max_concurrent_loads=1)
    assert msgpack.unpackb(encode_snapshot(limited))["max_concurrent_loads"] == 1
    assert decode_snapshot(encode_snapshot(limited)) == limited


def test_no_load_limit_is_not_sent_so_the_frame_is_what_older_replicas_send() -> None:
    raw = msgpack.unpackb(encode_snapshot(snapshot(max_concurrent_loads=None)))
    assert "max_concurrent_loads" not in raw
    assert set(raw) == set(payload())


def test_a_frame_without_the_load_limit_or_with_nil_decodes_as_none() -> None:
    assert decode_snapshot(frame_of(payload())).max_concurrent_loads is None
    assert (
        decode_snapshot(frame_of(payload(max_concurrent_loads=None))).max_concurrent_loads is None
    )


def test_a_model_may_be_resident_and_loading_at_once() -> None:
    both = snapshot(models=(ModelEntry(model_id="m", idle_s=0.0, in_use=0),), loading=("m",))
    assert decode_snapshot(encode_snapshot(both)) == both


def test_the_largest_report_fits_in_a_frame() -> None:
    models = tuple(
        ModelEntry(model_id=f"m{i}", idle_s=float(i), in_use=0)
        for i in range(MAX_MODELS_PER_REPORT)
    )
    big = snapshot(models=models, capacity=-1, loading=())
    assert decode_snapshot(encode_snapshot(big)) == big


# --- frame level -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["text", bytearray(b"\x80"), memoryview(b"\x80"), None, 1])
def test_non_bytes_are_rejected(frame: Any) -> None:
    with pytest.raises(WireError, match="a frame must be bytes"):
        decode_snapshot(frame)


def test_an_oversized_frame_is_rejected_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    def unpack_must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpacked an oversized frame")

    monkeypatch.setattr(msgpack, "unpackb", unpack_must_not_run)
    with pytest.raises(WireError, match=f"frame is {MAX_FRAME_BYTES + 1} bytes; the limit is"):
        decode_snapshot(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_a_snapshot_too_big_for_a_frame_is_not_encoded() -> None:
    models = tuple(
        ModelEntry(model_id=f"{i:0>{MAX_MODEL_ID_BYTES}}", idle_s=0.0, in_use=0)
        for i in range(MAX_FRAME_BYTES // MAX_MODEL_ID_BYTES)
    )
    with pytest.raises(WireError, match=r"snapshot frame would be \d+ bytes; the limit is"):
        encode_snapshot(snapshot(models=models, capacity=-1))


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\x92\x01", b"\x80\x80", b"\x91" * 10_000, b"\xa2\xff\xfe", b"\x81\x01\x02"],
)
def test_broken_msgpack_is_rejected(frame: bytes) -> None:
    with pytest.raises(WireError, match="frame is not valid msgpack"):
        decode_snapshot(frame)


def test_a_map_with_too_many_keys_is_rejected_by_the_unpacker() -> None:
    rejected({f"k{i}": i for i in range(1000)}, "not valid msgpack")


@pytest.mark.parametrize("obj", [[1, 2], "snapshot", 1, None, 1.5, True, b"bytes"])
def test_the_frame_must_be_a_map(obj: Any) -> None:
    rejected(obj, "frame must be a msgpack map")


def test_another_version_is_rejected_with_both_versions() -> None:
    rejected(payload(v=2), "unsupported wire version 2; this router speaks 1")


def test_a_future_version_with_other_fields_still_gets_the_version_error() -> None:
    rejected({"v": 2, "type": "snapshot2", "new": []}, "unsupported wire version 2")


def test_a_missing_version_is_rejected() -> None:
    rejected(payload(v=DROP), "no wire version field 'v'")


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_the_version_must_be_an_integer(version: Any) -> None:
    rejected(payload(v=version), "field 'v' must be an integer")


@pytest.mark.parametrize("frame_type", ["error", "", None, 1, DROP])
def test_the_type_must_be_snapshot(frame_type: Any) -> None:
    rejected(payload(type=frame_type), "expected frame type 'snapshot'")


# --- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(set(payload()) - {"v", "type"}))
def test_every_field_is_required(field: str) -> None:
    rejected(payload(**{field: DROP}), f"missing field '{field}'")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(WireError) as caught:
        decode_snapshot(frame_of(payload(url="x" * 10_000)))
    assert len(str(caught.value)) < 200


def test_unknown_fields_are_rejected() -> None:
    rejected(payload(extra=1), "unexpected field 'extra'")


def test_binary_keys_are_unknown_fields() -> None:
    rejected({**payload(), b"url": "x"}, "unexpected field b'url'")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replica_id", 3, "field 'replica_id' must be a string, not int"),
        ("replica_id", b"r", "field 'replica_id' must be a string, not bytes"),
        ("replica_id", "", "field 'replica_id' is empty"),
        ("replica_id", "r" * 257, "field 'replica_id' is 257 bytes; the limit is 256"),
        ("replica_id", "replica\n3", "field 'replica_id' must not contain spaces"),
        ("replica_id", "replica 3", "field 'replica_id' must not contain spaces"),
        ("incarnation", None, "field 'incarnation' must be a string, not nil"),
        ("incarnation", "", "field 'incarnation' is empty"),
        ("sequence", -1, "field 'sequence' must be >= 0, got -1"),
        ("sequence", 1.0, "field 'sequence' must be an integer, not float"),
        ("sequence", True, "field 'sequence' must be an integer, not bool"),
        ("url", "127.0.0.1:8001", "field 'url' must be an http:// or https:// URL"),
        ("url", "ftp://host", "field 'url' must be an http:// or https:// URL"),
        ("url", "http://", "field 'url' must be an http:// or https:// URL"),
        ("url", "http://host name", "field 'url' must be an http:// or https:// URL"),
        ("url", 8001, "field 'url' must be a string"),
        ("capacity", 0, "field 'capacity' must be -1 \\(unlimited\\) or >= 1, got 0"),
        ("capacity", -2, "field 'capacity' must be >= -1, got -2"),
        ("capacity", False, "field 'capacity' must be an integer, not bool"),
        ("in_flight", -1, "field 'in_flight' must be >= 0"),
        ("in_flight", "1", "field 'in_flight' must be an integer, not str"),
        ("max_ongoing_requests", 0, "field 'max_ongoing_requests' must be >= 1, got 0"),
        ("draining", 0, "field 'draining' must be a boolean, not int"),
        ("draining", None, "field 'draining' must be a boolean, not nil"),
        ("load_ms_avg", -1.0, "field 'load_ms_avg' must be a finite number >= 0"),
        ("load_ms_avg", math.nan, "field 'load_ms_avg' must be a finite number >= 0"),
        ("load_ms_avg", math.inf, "field 'load_ms_avg' must be a finite number >= 0"),
        ("load_ms_avg", "fast", "field 'load_ms_avg' must be a number, not str"),
        ("load_ms_avg", True, "field 'load_ms_avg' must be a number, not bool"),
        ("max_concurrent_loads", 0, "field 'max_concurrent_loads' must be >= 1, got 0"),
        ("max_concurrent_loads", -1, "field 'max_concurrent_loads' must be >= 1, got -1"),
        ("max_concurrent_loads", 1.0, "field 'max_concurrent_loads' must be an integer, not float"),
        ("max_concurrent_loads", True, "field 'max_concurrent_loads' must be an integer, not bool"),
        ("max_concurrent_loads", "1", "field 'max_concurrent_loads' must be an integer, not str"),
        ("models", {}, "field 'models' must be an array, not dict"),
        ("models", None, "field 'models' must be an array, not nil"),
        ("loading", "m", "field 'loading' must be an array, not str"),
    ],
)
def test_wrong_field_values_are_rejected_naming_the_field(
    field: str, value: Any, message: str
) -> None:
    rejected(payload(**{field: value}), message)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([["m", 1.0]], "models\\[0\\] must be an array \\[model_id, idle_s, in_use\\]"),
        ([["m", 1.0, 0, 0]], "models\\[0\\] must be an array"),
        (["m"], "models\\[0\\] must be an array"),
        ([{"m": 1}], "models\\[0\\] must be an array"),
        ([[1, 1.0, 0]], "models\\[0\\]: model id must be a string, not int"),
        ([["", 1.0, 0]], "models\\[0\\]: model id is empty"),
        ([["m" * 257, 1.0, 0]], "models\\[0\\]: model id is 257 bytes; the limit is 256"),
        ([["a\nb", 1.0, 0]], "models\\[0\\]: model id contains the control character U\\+000A"),
        ([["a", 1.0, 0], ["a", 2.0, 0]], "models\\[1\\]: model id 'a' appears twice in 'models'"),
        ([["m", -0.5, 0]], "models\\[0\\]: idle_s must be a finite number >= 0"),
        ([["m", math.nan, 0]], "models\\[0\\]: idle_s must be a finite number >= 0"),
        ([["m", math.inf, 0]], "models\\[0\\]: idle_s must be a finite number >= 0"),
        ([["m", "1", 0]], "models\\[0\\]: idle_s must be a number, not str"),
        ([["m", False, 0]], "models\\[0\\]: idle_s must be a number, not bool"),
        ([["m", 1.0, -1]], "models\\[0\\]: in_use must be an integer >= 0, got -1"),
        ([["m", 1.0, 1.0]], "models\\[0\\]: in_use must be an integer >= 0, got 1.0"),
        ([["m", 1.0, True]], "models\\[0\\]: in_use must be an integer >= 0, got True"),
    ],
)
def test_malformed_models_are_rejected_naming_the_entry(models: Any, message: str) -> None:
    rejected(payload(models=models), message)


@pytest.mark.parametrize(
    ("loading", "message"),
    [
        ([None], "loading\\[0\\]: model id must be a string, not nil"),
        (["ok", ""], "loading\\[1\\]: model id is empty"),
        (["\x7f"], "loading\\[0\\]: model id contains the control character U\\+007F"),
        (["a", "b", "a"], "loading\\[2\\]: model id 'a' appears twice in 'loading'"),
    ],
)
def test_malformed_loading_ids_are_rejected(loading: Any, message: str) -> None:
    rejected(payload(loading=loading), message)


def test_zero_idle_and_zero_in_use_are_valid() -> None:
    decoded = decode_snapshot(frame_of(payload(models=[["m", 0, 0]])))
    assert decoded.models == (ModelEntry(model_id="m", idle_s=0.0, in_use=0),)


def test_too_many_models_are_rejected() -> None:
    models = [[f"m{i}", 0, 0] for i in range(MAX_MODELS_PER_REPORT + 1)]
    rejected(payload(models=models, capacity=-1), "not valid msgpack: .*max_array_len")


# --- hits: how often each resident model was asked for -----------------------------------------


def entry(model_id: str = "m", *, hits: float = 0.0) -> ModelEntry:
    return ModelEntry(model_id=model_id, idle_s=1.0, in_use=0, hits=hits)


NOT_A_NUMBER: Any = "3"
"""A hit a buggy replica might build (the type checker would catch it; the encoder must too)."""


def test_a_snapshot_with_hits_survives_the_round_trip() -> None:
    original = snapshot(models=(entry("cold", hits=0.0), entry("warm", hits=12.5)))
    frame = encode_snapshot(original)
    assert msgpack.unpackb(frame)["hits"] == [0.0, 12.5]  # parallel to models, in LRU order
    assert msgpack.unpackb(frame)["models"] == [["cold", 1.0, 0], ["warm", 1.0, 0]]
    decoded = decode_snapshot(frame)
    assert decoded == original
    assert [m.hits for m in decoded.models] == [0.0, 12.5]


def test_hits_are_sent_only_when_one_is_not_zero_so_the_frame_is_what_older_replicas_send() -> None:
    raw = msgpack.unpackb(encode_snapshot(snapshot(models=(entry("a"), entry("b")))))
    assert "hits" not in raw
    assert set(raw) == set(payload())
    assert "hits" not in msgpack.unpackb(encode_snapshot(snapshot(models=())))
    assert "hits" in msgpack.unpackb(encode_snapshot(snapshot(models=(entry(hits=0.001),))))


def test_a_frame_without_hits_or_with_nil_decodes_with_zero_hits() -> None:
    """What an older replica sends (no `hits`): every model's hits are 0.0."""
    for frame in (frame_of(payload()), frame_of(payload(hits=None))):
        decoded = decode_snapshot(frame)
        assert [(m.model_id, m.hits) for m in decoded.models] == [("cold", 0.0), ("warm", 0.0)]
        assert all(type(m.hits) is float for m in decoded.models)


def test_integer_hits_are_accepted_and_become_floats() -> None:
    decoded = decode_snapshot(frame_of(payload(hits=[3, 2**64 - 1])))
    assert [m.hits for m in decoded.models] == [3.0, float(2**64 - 1)]
    assert all(type(m.hits) is float for m in decoded.models)


def test_hits_of_no_models_are_an_empty_array() -> None:
    assert decode_snapshot(frame_of(payload(models=[], hits=[]))).models == ()
    rejected(payload(models=[], hits=[1.0]), "field 'hits' must be an array of 0 numbers")


@pytest.mark.parametrize(
    ("hits", "message"),
    [
        ({}, "field 'hits' must be an array of 2 numbers, one per model"),
        ("1,2", "field 'hits' must be an array of 2 numbers, one per model"),
        (3.0, "field 'hits' must be an array of 2 numbers, one per model"),
        ([], "field 'hits' must be an array of 2 numbers, one per model"),
        ([1.0], "field 'hits' must be an array of 2 numbers, one per model"),
        ([1.0, 2.0, 3.0], "field 'hits' must be an array of 2 numbers, one per model"),
        ([1.0, -0.5], "hits\\[1\\] must be a finite number >= 0, got -0.5"),
        ([-1, 0], "hits\\[0\\] must be a finite number >= 0, got -1.0"),
        ([math.nan, 0.0], "hits\\[0\\] must be a finite number >= 0, got nan"),
        ([0.0, math.inf], "hits\\[1\\] must be a finite number >= 0, got inf"),
        ([-math.inf, 0.0], "hits\\[0\\] must be a finite number >= 0, got -inf"),
        (["3", 0.0], "hits\\[0\\] must be a number, not str"),
        ([0.0, None], "hits\\[1\\] must be a number, not nil"),
        ([True, 0.0], "hits\\[0\\] must be a number, not bool"),
        ([[1.0], 0.0], "hits\\[0\\] must be a number, not list"),
        ([b"\x01", 0.0], "hits\\[0\\] must be a number, not bytes"),
    ],
)
def test_malformed_hits_are_rejected_naming_the_problem(hits: Any, message: str) -> None:
    rejected(payload(hits=hits), message)


def test_hits_beside_malformed_models_are_a_wire_error() -> None:
    rejected(payload(models={"a": 1}, hits=[1.0]), "field 'hits'")
    rejected(payload(models=[["a", 1.0]], hits=[1.0]), "models\\[0\\] must be an array")


# --- encoding refuses what decoding would reject ------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sequence": -1}, "field 'sequence' must be >= 0"),
        ({"url": "localhost:80"}, "field 'url'"),
        ({"replica_id": ""}, "field 'replica_id' is empty"),
        ({"replica_id": "r\udcff"}, "field 'replica_id' is not valid UTF-8"),
        ({"incarnation": "\ud800"}, "field 'incarnation' is not valid UTF-8"),
        ({"loading": ("\udcff",)}, "loading\\[0\\]: model id is not valid UTF-8"),
        ({"models": (ModelEntry(model_id="m", idle_s=-1.0, in_use=0),)}, "idle_s"),
        ({"models": (ModelEntry(model_id="m", idle_s=10**400, in_use=0),)}, "idle_s is too large"),
        ({"sequence": 2**64}, "cannot encode snapshot frame"),
        ({"url": "http://h:1/\udcff"}, "field 'url'"),
        ({"draining": 1}, "field 'draining' must be a boolean"),
        ({"max_concurrent_loads": 0}, "field 'max_concurrent_loads' must be >= 1"),
        ({"models": (entry(hits=-1.0),)}, "hits\\[0\\] must be a finite number >= 0, got -1.0"),
        ({"models": (entry(hits=math.nan),)}, "hits\\[0\\] must be a finite number >= 0"),
        ({"models": (entry(hits=math.inf),)}, "hits\\[0\\] must be a finite number >= 0"),
        ({"models": (entry(hits=10**400),)}, "hits\\[0\\] is too large"),
        ({"models": (entry(hits=2**64),)}, "cannot encode snapshot frame"),
        ({"models": (entry(), entry("n", hits=NOT_A_NUMBER))}, "hits\\[1\\] must be a number"),
    ],
)
def test_encoding_refuses_invalid_snapshots(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=message):
        encode_snapshot(snapshot(**changes))


# --- error frames ------------------------------------------------------------------------------


def test_an_error_reply_survives_the_round_trip() -> None:
    frame = encode_error("bad_frame", "field 'sequence' must be >= 0, got -1")
    assert decode_error(frame) == ErrorReply(
        code="bad_frame", message="field 'sequence' must be >= 0, got -1"
    )
    assert msgpack.unpackb(frame) == {
        "v": 1,
        "type": "error",
        "code": "bad_frame",
        "message": "field 'sequence' must be >= 0, got -1",
    }


def test_an_error_reply_needs_a_code() -> None:
    with pytest.raises(WireError, match="field 'code' is empty"):
        encode_error("", "why")


def test_an_unencodable_error_message_is_refused() -> None:
    with pytest.raises(WireError, match="cannot encode error frame"):
        encode_error("bad_frame", "\udcff")


def test_error_and_snapshot_frames_are_not_confused() -> None:
    with pytest.raises(WireError, match="expected frame type 'snapshot', got 'error'"):
        decode_snapshot(encode_error("bad_frame", "x"))
    with pytest.raises(WireError, match="expected frame type 'error', got 'snapshot'"):
        decode_error(encode_snapshot(snapshot()))


def test_an_error_reply_in_another_version_is_rejected_on_the_replica() -> None:
    frame = frame_of({"v": 2, "type": "error", "code": "c", "message": "m"})
    with pytest.raises(WireError, match="unsupported wire version 2; this replica speaks 1"):
        decode_error(frame)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"v": 1, "type": "error", "code": "c"}, "missing field 'message'"),
        ({"v": 1, "type": "error", "code": "c", "message": 1}, "field 'message' must be a string"),
        ({"v": 1, "type": "error", "code": "c", "message": "", "x": 0}, "unexpected field 'x'"),
    ],
)
def test_malformed_error_replies_are_rejected(obj: Any, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_error(frame_of(obj))


# --- properties --------------------------------------------------------------------------------

model_ids = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
names = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Cf", "Co", "Cn", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=40,
)
ages = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False) | st.integers(0, 10**9)
counts = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def snapshots(draw: st.DrawFn, max_models: int = 20) -> ReplicaSnapshot:
    resident = draw(st.lists(model_ids, unique=True, max_size=max_models))
    return ReplicaSnapshot(
        replica_id=draw(names),
        incarnation=draw(names),
        sequence=draw(counts),
        url=draw(st.sampled_from(["http://", "https://"])) + draw(names),
        capacity=draw(st.just(-1) | st.integers(min_value=1, max_value=2**32)),
        models=tuple(
            ModelEntry(
                model_id=model_id,
                idle_s=draw(ages),
                in_use=draw(counts),
                hits=draw(st.just(0.0) | ages),
            )
            for model_id in resident
        ),
        loading=tuple(draw(st.lists(model_ids, unique=True, max_size=min(5, max_models)))),
        in_flight=draw(counts),
        max_ongoing_requests=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        draining=draw(st.booleans()),
        load_ms_avg=draw(st.none() | ages),
        max_concurrent_loads=draw(st.none() | st.integers(min_value=1, max_value=2**63 - 1)),
    )


@given(snapshots())
def test_any_valid_snapshot_survives_the_round_trip(original: ReplicaSnapshot) -> None:
    assert decode_snapshot(encode_snapshot(original)) == original


FUZZ = settings(max_examples=2000, deadline=None)
"""Thousands of cases for the decoders, which read whatever arrives on the state channel."""


def decoded_or_wire_error(decode: Callable[[bytes], _T], frame: bytes) -> _T | WireError:
    try:
        return decode(frame)
    except WireError as error:
        return error


def decodes_or_raises_wire_error(frame: bytes) -> None:
    """Both decoders either return what their encoder accepts back, or raise `WireError` with
    a message; any other exception fails the test."""
    result = decoded_or_wire_error(decode_snapshot, frame)
    if isinstance(result, WireError):
        assert str(result)
    else:
        assert isinstance(result, ReplicaSnapshot)
        assert decode_snapshot(encode_snapshot(result)) == result
    reply = decoded_or_wire_error(decode_error, frame)
    if isinstance(reply, WireError):
        assert str(reply)
    else:
        assert isinstance(reply, ErrorReply)
        assert decode_error(encode_error(reply.code, reply.message)) == reply


@FUZZ
@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_wire_error(frame: bytes) -> None:
    decodes_or_raises_wire_error(frame)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.integers(0, 9) | st.binary(max_size=8), children, max_size=5
        )
    ),
    max_leaves=10,
)


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_values_decode_or_raise_wire_error(obj: Any) -> None:
    decodes_or_raises_wire_error(frame_of(obj))


field_values = (
    scalars
    | st.lists(scalars, max_size=4)
    | st.lists(st.lists(scalars, max_size=4), max_size=3)
    | st.dictionaries(st.text(max_size=8), scalars, max_size=3)
)
"""Cheaper than `msgpack_values` (not recursive), and as good at breaking one field."""


VALID_FRAMES = [
    encode_snapshot(snapshot()),
    encode_snapshot(snapshot(models=(), loading=(), load_ms_avg=None, capacity=-1)),
    encode_snapshot(snapshot(max_concurrent_loads=2, draining=True, url="https://r:1")),
    encode_snapshot(
        snapshot(models=tuple(ModelEntry(model_id=f"m{i}", idle_s=i, in_use=i) for i in range(5)))
    ),
    encode_snapshot(
        snapshot(
            models=tuple(
                ModelEntry(model_id=f"m{i}", idle_s=i, in_use=0, hits=i * 1.5) for i in range(4)
            )
        )
    ),
    encode_error("bad_frame", "field 'sequence' must be >= 0, got -1"),
    encode_error("x", ""),
]
"""Frames to mutate: fixed (drawing a snapshot costs more than decoding it many times over)."""


def mutated(frame: bytes, data: st.DataObject) -> bytes:
    """`frame` after a few random edits: truncated, bytes replaced, inserted or deleted."""
    mutable = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, max(0, len(mutable) - 1)))
        edit = data.draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
        if edit == "truncate":
            del mutable[position:]
        elif edit == "replace" and mutable:
            mutable[position] = data.draw(st.integers(0, 255))
        elif edit == "insert":
            mutable[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del mutable[position : position + data.draw(st.integers(1, 8))]
    return bytes(mutable)


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_a_valid_frame_with_fields_or_bytes_changed_decodes_or_raises_wire_error(
    frame: bytes, data: st.DataObject
) -> None:
    raw: dict[str, Any] = msgpack.unpackb(frame)
    for _ in range(data.draw(st.integers(0, 3))):
        optional = ["max_concurrent_loads", "hits", "load_failures"]
        field = data.draw(st.sampled_from(sorted({*raw, *optional, "extra"})))
        value = data.draw(field_values | st.just(DROP))
        if value is DROP:
            raw.pop(field, None)
        else:
            raw[field] = value
    changed = frame_of(raw)
    if data.draw(st.booleans()):
        changed = mutated(changed, data)
    decodes_or_raises_wire_error(changed)


NESTING = 1000
"""Arrays this deep still unpack (msgpack's limit is 1024), but repr() of them recurses past
Python's default recursion limit."""
NESTED_HERE = "<nested array>"


def with_nested_array(obj: Any) -> bytes:
    """The frame of `obj` with its `NESTED_HERE` string replaced by an array nested `NESTING`
    deep (msgpack.packb refuses to build one)."""
    return frame_of(obj).replace(frame_of(NESTED_HERE), b"\x91" * NESTING + b"\xc0")


@pytest.mark.parametrize(
    ("decode", "obj"),
    [
        (decode_snapshot, {"v": 1, "type": NESTED_HERE}),
        (decode_error, {"v": 1, "type": NESTED_HERE}),
        (decode_snapshot, payload(models=[["m", 0.0, NESTED_HERE]])),
    ],
    ids=["snapshot type", "error type", "snapshot in_use"],
)
def test_a_deeply_nested_value_raises_wire_error(decode: Any, obj: Any) -> None:
    frame = with_nested_array(obj)
    assert frame != frame_of(obj)
    with pytest.raises(WireError) as caught:
        decode(frame)
    assert str(caught.value)
