from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.auth import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    authorization_value,
    generate_secret,
    is_authorized,
    load_secret,
)


def write(path: Path, content: str) -> str:
    path.write_text(content, encoding="utf-8")
    return str(path)


def test_generated_secrets_are_long_random_and_header_safe() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert len(first) >= 43
    assert first.isascii()
    assert first.isprintable()
    assert " " not in first
    assert load_secret(environ={SECRET_ENV: first}) == first


def test_nothing_configured_means_no_secret() -> None:
    assert load_secret(environ={}) is None


def test_the_environment_variable_is_used_and_stripped() -> None:
    assert load_secret(environ={SECRET_ENV: "  s3cret\n"}) == "s3cret"


def test_the_file_named_by_the_environment_is_used(tmp_path: Path) -> None:
    path = write(tmp_path / "secret", "from-file\n")
    assert load_secret(environ={SECRET_FILE_ENV: path}) == "from-file"


def test_an_explicit_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "secret", "explicit")
    other = write(tmp_path / "other", "from-env-file")
    environ = {SECRET_ENV: "from-env", SECRET_FILE_ENV: other}
    assert load_secret(secret_file=path, environ=environ) == "explicit"


def test_the_variable_wins_over_the_file_variable(tmp_path: Path) -> None:
    other = write(tmp_path / "other", "from-env-file")
    assert load_secret(environ={SECRET_ENV: "from-env", SECRET_FILE_ENV: other}) == "from-env"


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    monkeypatch.setenv(SECRET_ENV, "process-secret")
    assert load_secret() == "process-secret"


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"secret file {path} does not exist"):
        load_secret(secret_file=path)
    with pytest.raises(ValueError, match=f"secret file {path} does not exist"):
        load_secret(environ={SECRET_FILE_ENV: path})


@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_an_empty_file_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "secret", content)
    with pytest.raises(ValueError, match=f"secret file {path} is empty"):
        load_secret(secret_file=path)


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"cannot read secret file {tmp_path}"):
        load_secret(secret_file=str(tmp_path))


def test_a_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"cannot read secret file {path}"):
        load_secret(secret_file=str(path))


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_variable_is_an_error_not_a_disabled_secret(value: str) -> None:
    with pytest.raises(ValueError, match=f"\\${SECRET_ENV} is empty"):
        load_secret(environ={SECRET_ENV: value})


def test_an_empty_file_variable_is_an_error() -> None:
    with pytest.raises(ValueError, match=f"\\${SECRET_FILE_ENV} is set but empty"):
        load_secret(environ={SECRET_FILE_ENV: ""})


@pytest.mark.parametrize("secret", ["two words", "line\nbreak", "tab\there", "naïve", "a\x00b"])
def test_a_secret_that_cannot_travel_in_a_header_is_rejected(secret: str) -> None:
    with pytest.raises(ValueError, match="visible ASCII"):
        load_secret(environ={SECRET_ENV: secret})


def test_authorization_value_is_a_bearer_token() -> None:
    assert authorization_value("abc") == "Bearer abc"


def test_the_own_authorization_value_is_authorized() -> None:
    secret = generate_secret()
    assert is_authorized(authorization_value(secret), secret)


@pytest.mark.parametrize("header", ["bearer abc", "BEARER abc", "Bearer  abc", " Bearer abc "])
def test_scheme_case_and_extra_spaces_are_tolerated(header: str) -> None:
    assert is_authorized(header, "abc")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "abc",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer abd",
        "Bearer abc extra",
        "Bearerabc",
    ],
)
def test_wrong_or_malformed_headers_are_refused(header: str | None) -> None:
    assert not is_authorized(header, "abc")


def test_an_empty_secret_authorizes_nothing() -> None:
    assert not is_authorized("Bearer ", "")
    assert not is_authorized("Bearer x", "")


def test_non_ascii_and_undecodable_headers_are_refused_not_raised() -> None:
    assert not is_authorized("Bearer ñandú", "abc")
    assert not is_authorized("Bearer \udcff\ud800", "abc")


@given(st.one_of(st.none(), st.text()), st.text())
def test_is_authorized_never_raises(header: str | None, secret: str) -> None:
    assert is_authorized(header, secret) in (True, False)
