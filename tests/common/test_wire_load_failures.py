"""The optional `load_failures` field of a replica's report."""

import msgpack
import pytest

from common.wire import (
    MAX_FAILURE_MESSAGE_CHARS,
    LoadFailure,
    ReplicaSnapshot,
    WireError,
    decode_snapshot,
    encode_snapshot,
)


def report(**fields: object) -> ReplicaSnapshot:
    base: dict[str, object] = {
        "replica_id": "r1",
        "incarnation": "i",
        "sequence": 1,
        "url": "http://127.0.0.1:9000",
        "capacity": 3,
        "models": (),
        "loading": (),
        "in_flight": 0,
        "max_ongoing_requests": 8,
        "draining": False,
    }
    return ReplicaSnapshot(**{**base, **fields})  # type: ignore[arg-type]


def test_load_failures_round_trip_and_are_left_out_when_there_are_none() -> None:
    failures = (LoadFailure(model_id="bad", message="OSError: gone", age_s=1.5),)
    assert (
        decode_snapshot(encode_snapshot(report(load_failures=failures))).load_failures == failures
    )
    frame = encode_snapshot(report())
    assert "load_failures" not in msgpack.unpackb(frame)
    assert decode_snapshot(frame).load_failures == ()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("nope", "must be an array"),
        ([["bad", "x"]], r"must be an array \[model_id, message, age_s\]"),
        ([["bad", 3, 1.0]], "message must be a string"),
        ([["bad", "x" * (MAX_FAILURE_MESSAGE_CHARS + 1), 1.0]], "at most 500"),
        ([["bad", "x", -1.0]], "age_s must be a finite number >= 0"),
        ([["bad", "x", 1.0], ["bad", "y", 2.0]], "appears twice"),
        ([["", "x", 1.0]], "model id is empty"),
    ],
)
def test_a_malformed_load_failure_is_a_wire_error(value: object, complaint: str) -> None:
    payload = msgpack.unpackb(encode_snapshot(report()))
    payload["load_failures"] = value
    with pytest.raises(WireError, match=complaint):
        decode_snapshot(msgpack.packb(payload))
