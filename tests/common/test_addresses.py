import pytest

from common.addresses import connect_host, reachable_url


@pytest.mark.parametrize(
    ("bind", "host"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "[::1]"),
        ("[::]", "[::1]"),
        ("::1", "[::1]"),
        ("10.0.0.7", "10.0.0.7"),
        ("router.internal", "router.internal"),
    ],
)
def test_a_wildcard_bind_is_reached_on_loopback_and_ipv6_is_bracketed(bind: str, host: str) -> None:
    assert connect_host(bind) == host


def test_reachable_url_rewrites_only_the_host() -> None:
    assert reachable_url("http://0.0.0.0:8000") == "http://127.0.0.1:8000"
    assert reachable_url("http://[::]:8000/") == "http://[::1]:8000"
    assert reachable_url("https://10.1.2.3:443") == "https://10.1.2.3:443"
    assert reachable_url("not a url") == "not a url"
