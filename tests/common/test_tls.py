"""The config's `tls` section (every file checked at load time, each problem naming its key) and
the contexts `common.tls` builds from it, tried in real handshakes through `listening`."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from certs import OPENSSL, Pki, make_pki

from common.config import (
    ConfigError,
    InternalTlsConfig,
    PublicTlsConfig,
    TlsConfig,
    dump_config,
    load_config,
    parse_config,
)
from common.serving import listening
from common.tls import (
    Side,
    client_context,
    has_client_certificate,
    scheme,
    server_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_data(pki: Pki, *, client_auth: bool = False, **internal: object) -> dict[str, Any]:
    return {
        "public": {
            "cert_file": str(pki.node_cert),
            "key_file": str(pki.node_key),
            "ca_file": str(pki.ca),
        },
        "internal": {
            "cert_file": str(pki.node_cert),
            "key_file": str(pki.node_key),
            "ca_file": str(pki.ca),
            "client_auth": client_auth,
            **internal,
        },
    }


def with_tls(tls: object) -> dict[str, Any]:
    return {"deployment": {"import_path": "pkg.mod:Cls"}, "tls": tls}


def tls_error(tls: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_tls(tls))
    return caught.value


# -- the config section ------------------------------------------------------------------------


def test_no_tls_section_is_plain_http_and_is_not_dumped() -> None:
    config = parse_config({"deployment": {"import_path": "pkg.mod:Cls"}})
    assert config.tls == TlsConfig()
    assert "tls" not in dump_config(config)
    assert scheme(config.tls, Side.ROUTER) == scheme(config.tls, Side.REPLICA) == "http"
    for side in Side:
        assert server_context(config.tls, side) is None
        assert client_context(config.tls, side) is None


def test_a_full_section_parses_and_round_trips(pki: Pki) -> None:
    config = parse_config(with_tls(tls_data(pki, client_auth=True)))
    assert config.tls.public == PublicTlsConfig(
        cert_file=str(pki.node_cert), key_file=str(pki.node_key), ca_file=str(pki.ca)
    )
    assert config.tls.internal == InternalTlsConfig(
        cert_file=str(pki.node_cert),
        key_file=str(pki.node_key),
        ca_file=str(pki.ca),
        client_auth=True,
    )
    assert parse_config(dump_config(config)) == config
    assert scheme(config.tls, Side.ROUTER) == scheme(config.tls, Side.REPLICA) == "https"


def test_relative_paths_are_taken_from_the_config_files_directory(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cluster.yaml"
    data = tls_data(pki)
    for section in data.values():
        for key, value in section.items():
            if key.endswith("_file"):
                section[key] = os.path.relpath(value, tmp_path)
    path.write_text(yaml.safe_dump(with_tls(data)))
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.tls.internal is not None
    assert Path(config.tls.internal.ca_file).samefile(pki.ca)
    assert os.path.isabs(config.tls.internal.ca_file)
    assert load_config(path) == parse_config(dump_config(config), source=str(path))


def test_a_missing_key_file_names_the_key(pki: Pki, tmp_path: Path) -> None:
    data = tls_data(pki)
    data["public"]["key_file"] = str(tmp_path / "nowhere.key")
    error = tls_error(data)
    assert error.key == "tls.public.key_file"
    assert "no such file" in str(error)
    assert str(tmp_path / "nowhere.key") in str(error)


def test_a_key_that_does_not_match_its_certificate_names_the_key_file(pki: Pki) -> None:
    error = tls_error(tls_data(pki, key_file=str(pki.client_key)))
    assert error.key == "tls.internal.key_file"
    assert "does not match the certificate" in error.problem


def test_a_certificate_file_without_a_certificate(pki: Pki) -> None:
    error = tls_error(tls_data(pki, cert_file=str(pki.node_key)))
    assert error.key == "tls.internal.cert_file"
    assert "holds no PEM certificate" in error.problem


def test_a_key_file_without_a_key(pki: Pki) -> None:
    data = tls_data(pki)
    data["public"]["key_file"] = str(pki.node_cert)
    error = tls_error(data)
    assert (error.key, "holds no PEM private key" in error.problem) == ("tls.public.key_file", True)


def test_an_encrypted_key_is_refused_without_a_prompt(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [OPENSSL, "pkey", "-in", pki.node_key, "-out", encrypted, "-aes256", "-passout", "pass:x"],
        check=True,
        capture_output=True,
    )
    error = tls_error(tls_data(pki, key_file=str(encrypted)))
    assert error.key == "tls.internal.key_file"
    assert "encrypted" in error.problem


def test_a_ca_file_holding_a_server_certificate(pki: Pki) -> None:
    error = tls_error(tls_data(pki, ca_file=str(pki.node_cert)))
    assert error.key == "tls.internal.ca_file"
    assert "no CA certificate" in error.problem


def test_a_directory_is_not_a_pem_file(pki: Pki, tmp_path: Path) -> None:
    error = tls_error(tls_data(pki, ca_file=str(tmp_path)))
    assert (error.key, "is a directory" in error.problem) == ("tls.internal.ca_file", True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(pki: Pki, tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(pki.node_key.read_bytes())
    secret.chmod(0)
    error = tls_error(tls_data(pki, key_file=str(secret)))
    assert (error.key, "cannot read" in error.problem) == ("tls.internal.key_file", True)


def test_client_auth_needs_tls_on_the_routers_listener(pki: Pki) -> None:
    data = tls_data(pki, client_auth=True)
    del data["public"]
    error = tls_error(data)
    assert error.key == "tls.internal.client_auth"
    assert "tls.public" in error.problem


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"internal": {"cert_file": "x", "key_file": "y"}}, "tls.internal.ca_file"),
        ({"internal": {"cert_file": "x", "key_file": "y", "ca_file": 3}}, "tls.internal.ca_file"),
        (
            {"internal": {"cert_file": "x", "key_file": "y", "ca_file": "z", "client_auth": 1}},
            "tls.internal.client_auth",
        ),
        ({"internal": {"cert_file": ""}}, "tls.internal.cert_file"),
        ({"public": {"key_file": "k"}}, "tls.public.cert_file"),
        ({"public": {"cert_file": "c", "key_file": "k", "ca_file": ""}}, "tls.public.ca_file"),
        ({"public": {"cert_file": "c", "key_file": "k", "verify": True}}, "tls.public.verify"),
        ({"cert_file": "c"}, "tls.cert_file"),
        ({"public": "on"}, "tls.public"),
    ],
)
def test_malformed_sections_name_the_key(change: dict[str, Any], key: str) -> None:
    assert tls_error(change).key == key


def test_a_tls_section_must_be_a_mapping() -> None:
    assert tls_error(["public"]).key == "tls"


def test_only_public_tls_leaves_the_replicas_on_plain_http(pki: Pki) -> None:
    data = tls_data(pki)
    del data["internal"]
    del data["public"]["ca_file"]
    tls = parse_config(with_tls(data)).tls
    assert (scheme(tls, Side.ROUTER), scheme(tls, Side.REPLICA)) == ("https", "http")
    assert server_context(tls, Side.REPLICA) is None
    assert client_context(tls, Side.REPLICA) is None
    to_router = client_context(tls, Side.ROUTER)
    assert to_router is not None  # the system's trust store, as no ca_file is given
    assert to_router.verify_mode is ssl.CERT_REQUIRED
    assert to_router.check_hostname


# -- the contexts ------------------------------------------------------------------------------


def test_who_asks_for_client_certificates(pki: Pki) -> None:
    plain = parse_config(with_tls(tls_data(pki))).tls
    mutual = parse_config(with_tls(tls_data(pki, client_auth=True))).tls
    for tls, router_mode, replica_mode in [
        (plain, ssl.CERT_NONE, ssl.CERT_NONE),
        (mutual, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED),  # the public port serves clients too
    ]:
        router, replica = server_context(tls, Side.ROUTER), server_context(tls, Side.REPLICA)
        assert router is not None
        assert replica is not None
        assert (router.verify_mode, replica.verify_mode) == (router_mode, replica_mode)
        for side in Side:
            client = client_context(tls, side)
            assert client is not None
            assert client.verify_mode is ssl.CERT_REQUIRED
            assert client.check_hostname


async def peer(request: web.Request) -> web.Response:
    return web.json_response({"certified": has_client_certificate(request.transport)})


def peer_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", peer)
    return app


async def get_json(url: str, context: ssl.SSLContext | bool) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return await response.json()


def stranger_context(pki: Pki) -> ssl.SSLContext:
    """A client trusting the cluster's CA but presenting a certificate of another CA."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.stranger_cert, pki.stranger_key)
    return context


async def test_a_replica_with_client_auth_serves_only_peers_with_a_certificate(pki: Pki) -> None:
    tls = parse_config(with_tls(tls_data(pki, client_auth=True))).tls
    context = client_context(tls, Side.REPLICA)
    assert context is not None
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    async with listening(
        peer_app(), "127.0.0.1", 0, ssl_context=server_context(tls, Side.REPLICA)
    ) as port:
        url = f"https://127.0.0.1:{port}/"
        assert await get_json(url, context) == {"certified": True}
        for refused in (anonymous, stranger_context(pki)):
            with pytest.raises(aiohttp.ClientError):
                await get_json(url, refused)


async def test_the_routers_listener_tells_who_presented_a_certificate(pki: Pki) -> None:
    tls = parse_config(with_tls(tls_data(pki, client_auth=True))).tls
    context = client_context(tls, Side.ROUTER)
    assert context is not None
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    async with listening(
        peer_app(), "127.0.0.1", 0, ssl_context=server_context(tls, Side.ROUTER)
    ) as port:
        url = f"https://127.0.0.1:{port}/"
        assert await get_json(url, context) == {"certified": True}
        assert await get_json(url, anonymous) == {"certified": False}
        with pytest.raises(aiohttp.ClientError):  # a certificate it cannot verify
            await get_json(url, stranger_context(pki))


async def test_a_client_refuses_a_server_its_ca_did_not_sign(pki: Pki) -> None:
    tls = parse_config(with_tls(tls_data(pki))).tls
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stranger.load_cert_chain(pki.stranger_cert, pki.stranger_key)
    async with listening(peer_app(), "127.0.0.1", 0, ssl_context=stranger) as port:
        context = client_context(tls, Side.REPLICA)
        assert context is not None
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get_json(f"https://127.0.0.1:{port}/", context)


async def test_a_plain_http_request_to_a_tls_listener_fails(pki: Pki) -> None:
    tls = parse_config(with_tls(tls_data(pki))).tls
    async with listening(
        peer_app(), "127.0.0.1", 0, ssl_context=server_context(tls, Side.ROUTER)
    ) as port:
        with pytest.raises(aiohttp.ClientError):
            await get_json(f"http://127.0.0.1:{port}/", False)
