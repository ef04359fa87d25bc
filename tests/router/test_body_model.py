import json

from hypothesis import given
from hypothesis import strategies as st

from router._body_model import BodyModel, ModelField


def scan(body: bytes, chunk: int = 1) -> str | BodyModel:
    field = ModelField()
    result: str | BodyModel = BodyModel.NEED_MORE
    for start in range(0, len(body), chunk):
        result = field.feed(body[start : start + chunk])
        if result is not BodyModel.NEED_MORE:
            return result
    return result


def test_the_top_level_model_field_is_found_as_soon_as_it_is_complete() -> None:
    body = b'{"model": "lora-7", "prompt": "' + b"x" * 100_000 + b'"}'
    field = ModelField()
    assert field.feed(body[:20]) == "lora-7"
    assert field.seen == 20  # the rest was never needed


def test_nested_and_quoted_model_keys_do_not_count() -> None:
    body = b'{"meta": {"model": "no"}, "text": "\\"model\\": \\"no\\"", "model": "yes"}'
    assert scan(body) == "yes"
    assert scan(b'{"messages": [{"model": "no"}], "model": "a\\u00e9b"}') == "a\u00e9b"


def test_a_body_without_a_string_model_says_so() -> None:
    assert scan(b'{"prompt": "hi"}') is BodyModel.MISSING
    assert scan(b'{"model": 7, "x": 1}') is BodyModel.MISSING
    assert scan(b'[{"model": "a"}]') is BodyModel.NOT_JSON
    assert scan(b'{"model": "unterminated') is BodyModel.NEED_MORE


objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=6), objects, max_size=4), st.integers(1, 7))
def test_the_scanner_agrees_with_json_loads(document: dict[str, object], chunk: int) -> None:
    body = json.dumps(document).encode()
    expected = document.get("model")
    result = scan(body, chunk)
    if isinstance(expected, str):
        assert result == expected
    else:
        assert result is BodyModel.MISSING
