from hypothesis import given
from hypothesis import strategies as st

from common.request_id import new_request_id, request_id_from


def test_a_sane_client_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from("abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in (None, "", "has space", "a\r\nX-Evil: 1", "x" * 129, "é"):
        replaced = request_id_from(bad)
        assert replaced != bad
        assert len(replaced) == 16
    assert new_request_id() != new_request_id()


@given(st.text())
def test_the_id_is_always_a_safe_token(value: str) -> None:
    chosen = request_id_from(value)
    assert 1 <= len(chosen) <= 128
    assert all(c.isascii() and (c.isalnum() or c in "-._:") for c in chosen)
