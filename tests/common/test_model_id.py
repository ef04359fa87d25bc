import contextlib
import unicodedata
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from common.model_id import (
    MAX_MODEL_ID_BYTES,
    MODEL_ID_HEADERS,
    InvalidModelId,
    model_id_from_headers,
    validate_model_id,
)

VALID_CHARACTERS = st.characters(exclude_categories=("Cc", "Cs"))


@pytest.mark.parametrize(
    "raw",
    ["", "llama-7b", "org/model:v2", " padded ", "模型-😀", "a" * MAX_MODEL_ID_BYTES],
)
def test_valid_ids_come_back_unchanged(raw: str) -> None:
    assert validate_model_id(raw) is raw


def test_the_byte_limit_counts_utf8_bytes_not_characters() -> None:
    assert validate_model_id("é" * 128) == "é" * 128
    with pytest.raises(InvalidModelId, match="model id is 258 bytes; the limit is 256"):
        validate_model_id("é" * 129)


def test_too_long_id_is_rejected_with_its_size() -> None:
    with pytest.raises(InvalidModelId, match="model id is 300 bytes; the limit is 256"):
        validate_model_id("a" * 300)


@pytest.mark.parametrize("control", ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x80", "\x9f"])
def test_control_characters_are_rejected(control: str) -> None:
    with pytest.raises(InvalidModelId, match=f"U\\+{ord(control):04X} at position 3"):
        validate_model_id(f"abc{control}def")


@pytest.mark.parametrize("raw", ["a\ud800", "\udcff", "model-\udc80"])
def test_lone_surrogates_mean_invalid_utf8(raw: str) -> None:
    with pytest.raises(InvalidModelId, match="model id is not valid UTF-8"):
        validate_model_id(raw)


def test_undecodable_header_bytes_are_rejected() -> None:
    raw = b"model-\xff\xfe".decode("utf-8", "surrogateescape")
    with pytest.raises(InvalidModelId, match="not valid UTF-8"):
        validate_model_id(raw)


def test_invalid_model_id_is_a_value_error() -> None:
    assert issubclass(InvalidModelId, ValueError)


@given(st.characters(codec="utf-8"))
def test_a_character_is_rejected_exactly_when_it_is_a_control(character: str) -> None:
    is_control = unicodedata.category(character) == "Cc"
    try:
        validate_model_id(character)
    except InvalidModelId:
        assert is_control
    else:
        assert not is_control


def test_every_control_character_is_rejected() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        with pytest.raises(InvalidModelId, match="control character"):
            validate_model_id(chr(code))


@given(st.text(VALID_CHARACTERS, max_size=64))
def test_ids_within_the_rules_are_accepted(raw: str) -> None:
    assert len(raw.encode("utf-8")) <= MAX_MODEL_ID_BYTES
    assert validate_model_id(raw) == raw


@given(st.text())
def test_validation_accepts_or_raises_invalid_model_id(raw: str) -> None:
    with contextlib.suppress(InvalidModelId):
        assert validate_model_id(raw) == raw


def test_both_header_spellings_are_known() -> None:
    assert MODEL_ID_HEADERS == ("serve_multiplexed_model_id", "serve-multiplexed-model-id")


@pytest.mark.parametrize("name", MODEL_ID_HEADERS)
def test_either_spelling_names_the_model_in_a_plain_dict(name: str) -> None:
    assert model_id_from_headers({name: "llama", "other": "x"}) == "llama"


@pytest.mark.parametrize(
    "name",
    ["Serve-Multiplexed-Model-Id", "SERVE_MULTIPLEXED_MODEL_ID", "serve_multiplexed_model_id"],
)
def test_a_case_insensitive_mapping_matches_any_case(name: str) -> None:
    headers = CIMultiDictProxy(CIMultiDict({name: "llama"}))
    assert model_id_from_headers(headers) == "llama"


def test_absent_header_means_no_model() -> None:
    assert model_id_from_headers({}) == ""
    assert model_id_from_headers(CIMultiDictProxy(CIMultiDict())) == ""


def test_empty_header_means_no_model() -> None:
    assert model_id_from_headers({"serve_multiplexed_model_id": ""}) == ""


def test_the_value_is_kept_exactly() -> None:
    assert model_id_from_headers({"serve-multiplexed-model-id": " a "}) == " a "


def test_the_header_value_is_validated() -> None:
    with pytest.raises(InvalidModelId, match="300 bytes"):
        model_id_from_headers({"serve_multiplexed_model_id": "a" * 300})


def test_both_spellings_with_the_same_value_are_fine() -> None:
    headers = dict.fromkeys(MODEL_ID_HEADERS, "llama")
    assert model_id_from_headers(headers) == "llama"


def test_both_spellings_with_different_values_are_rejected() -> None:
    headers = dict(zip(MODEL_ID_HEADERS, ["llama", "mistral"], strict=True))
    with pytest.raises(InvalidModelId, match="more than one model id"):
        model_id_from_headers(headers)


def test_a_repeated_header_with_different_values_is_rejected() -> None:
    headers = CIMultiDict(
        [("serve_multiplexed_model_id", "a"), ("serve_multiplexed_model_id", "b")]
    )
    with pytest.raises(InvalidModelId, match="more than one model id"):
        model_id_from_headers(CIMultiDictProxy(headers))


def test_a_repeated_header_with_one_value_is_fine() -> None:
    headers = CIMultiDict(
        [("serve-multiplexed-model-id", "a"), ("Serve-Multiplexed-Model-Id", "a")]
    )
    assert model_id_from_headers(CIMultiDictProxy(headers)) == "a"


# --- fuzzing: thousands of cases -------------------------------------------------------------

FUZZ = settings(max_examples=2000, deadline=None)
HEADER_NAMES = st.sampled_from(
    [*MODEL_ID_HEADERS, "Serve-Multiplexed-Model-Id", "SERVE_MULTIPLEXED_MODEL_ID", "model"]
)
RAW_IDS = (
    st.text(max_size=300)
    | st.text(VALID_CHARACTERS, min_size=60, max_size=260)
    | st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
)
"""Any text, long text near the byte limit, and header bytes as aiohttp hands them over."""


def follows_the_rules(raw: str) -> bool:
    """The module's rules, restated: valid UTF-8, at most 256 bytes, no Cc character."""
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return size <= MAX_MODEL_ID_BYTES and all(unicodedata.category(c) != "Cc" for c in raw)


def outcome(read: Callable[[], str]) -> str | InvalidModelId:
    try:
        return read()
    except InvalidModelId as error:
        return error


@FUZZ
@given(RAW_IDS)
def test_any_id_is_returned_unchanged_or_rejected_with_a_message(raw: str) -> None:
    result = outcome(lambda: validate_model_id(raw))
    if follows_the_rules(raw):
        assert result is raw
    else:
        assert isinstance(result, InvalidModelId)
        assert str(result)


@FUZZ
@given(st.lists(st.tuples(HEADER_NAMES, RAW_IDS), max_size=4), st.booleans())
def test_any_headers_name_their_one_id_or_raise_invalid_model_id(
    pairs: list[tuple[str, str]], case_insensitive: bool
) -> None:
    if case_insensitive:
        headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(pairs))
        named = {value for name, value in pairs if name.lower() in MODEL_ID_HEADERS}
    else:
        headers = dict(pairs)
        named = {value for name, value in headers.items() if name in MODEL_ID_HEADERS}
    result = outcome(lambda: model_id_from_headers(headers))
    if not named:
        assert result == ""
    elif len(named) == 1 and follows_the_rules(next(iter(named))):
        assert result == next(iter(named))
    else:
        assert isinstance(result, InvalidModelId)
        assert str(result)
