"""TLS contexts from the config's `tls` section: the one place that decides who presents which
certificate and who trusts what.

    listener     presents            asks its peer for a certificate (only with client_auth)
    router       tls.public cert     optional, verified against tls.internal.ca_file; the state
                                     channel then refuses a peer without one
    replica      tls.internal cert   required, verified against tls.internal.ca_file

    connecting to   trusts                                    presents (only with client_auth)
    the router      tls.public.ca_file, else the system's     tls.internal cert
    a replica       tls.internal.ca_file                      tls.internal cert

A section left out means plain HTTP for that hop: `tls.public` for the router's listener (and so
for the state channel, which lands on it), `tls.internal` for the replicas' listeners. Client
contexts check the peer's name (host name or IP address) against its certificate.

Pure except for reading the files: a file that cannot be used is a `TlsFileError` naming its
config key, so `common.config` reports it when the config is loaded.
"""

from __future__ import annotations

import enum
import ssl
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import asyncio

    from common.config import TlsConfig

__all__ = [
    "Side",
    "TlsFileError",
    "check_files",
    "client_auth",
    "client_context",
    "has_client_certificate",
    "scheme",
    "server_context",
]


class Side(enum.Enum):
    """Whose listener: the router's or a replica's."""

    ROUTER = "router"
    REPLICA = "replica"


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; `.key` is its dotted config key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def scheme(tls: TlsConfig, side: Side) -> str:
    """ "https" if `side`'s listener speaks TLS, else "http"."""
    section = tls.public if side is Side.ROUTER else tls.internal
    return "http" if section is None else "https"


def client_auth(tls: TlsConfig) -> bool:
    """Whether router and replicas authenticate each other with client certificates."""
    return tls.internal is not None and tls.internal.client_auth


def server_context(tls: TlsConfig, side: Side) -> ssl.SSLContext | None:
    """What `side`'s listener serves with; None: plain HTTP."""
    internal = tls.internal
    if side is Side.ROUTER:
        if tls.public is None:
            return None
        context = _new(ssl.PROTOCOL_TLS_SERVER)
        _load_identity(context, "tls.public", tls.public.cert_file, tls.public.key_file)
        if internal is not None and client_auth(tls):
            _load_trust(context, "tls.internal.ca_file", internal.ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL  # clients of the public port have none
        return context
    if internal is None:
        return None
    context = _new(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(context, "tls.internal", internal.cert_file, internal.key_file)
    if client_auth(tls):
        _load_trust(context, "tls.internal.ca_file", internal.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: TlsConfig, to: Side) -> ssl.SSLContext | None:
    """What connections to `to`'s listeners use; None: plain HTTP. Build it once and reuse it."""
    internal = tls.internal
    context = _new(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer's certificate and name
    if to is Side.ROUTER:
        if tls.public is None:
            return None
        if tls.public.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _load_trust(context, "tls.public.ca_file", tls.public.ca_file)
    else:
        if internal is None:
            return None
        _load_trust(context, "tls.internal.ca_file", internal.ca_file)
    if internal is not None and client_auth(tls):
        _load_identity(context, "tls.internal", internal.cert_file, internal.key_file)
    return context


def check_files(tls: TlsConfig) -> None:
    """Load every file of `tls` the way the processes will; TlsFileError for the first that
    cannot be used."""
    for side in Side:
        server_context(tls, side)
        client_context(tls, side)


def has_client_certificate(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the peer on `transport` presented a certificate that the TLS handshake verified
    (a context that asks for one rejects a certificate it cannot verify)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) and bool(ssl_object.getpeercert())


def _new(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise TlsFileError(key, f"no such file: {path}") from None
    except IsADirectoryError:
        raise TlsFileError(key, f"{path} is a directory, not a PEM file") from None
    except OSError as error:
        raise TlsFileError(key, f"cannot read {path}: {error.strerror or error}") from None


def _no_password() -> NoReturn:
    raise TlsFileError("", "encrypted")  # never let OpenSSL prompt on the terminal


def _load_identity(context: ssl.SSLContext, section: str, cert_file: str, key_file: str) -> None:
    """Load the certificate chain and its key into `context`, naming the key that is wrong."""
    cert_key, key_key = f"{section}.cert_file", f"{section}.key_file"
    _parse_certificates(cert_key, cert_file, _read(cert_key, cert_file))
    key_pem = _read(key_key, key_file)
    encrypted = f"{key_file} is encrypted; modelplex needs an unencrypted key"
    if b"ENCRYPTED" in key_pem:
        raise TlsFileError(key_key, encrypted)
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsFileError(key_key, f"{key_file} holds no PEM private key")
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except TlsFileError:
        raise TlsFileError(key_key, encrypted) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            problem = f"the key in {key_file} does not match the certificate in {cert_file}"
        else:
            problem = f"{key_file}: the key cannot be loaded with {cert_file}: {error}"
        raise TlsFileError(key_key, problem) from None
    except OSError as error:  # the file changed under us
        raise TlsFileError(key_key, f"cannot read {key_file}: {error}") from None


def _parse_certificates(key: str, path: str, pem: bytes) -> ssl.SSLContext:
    """A context trusting the certificates in `pem`, to count them; TlsFileError if none."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TlsFileError(key, f"{path} holds no PEM certificate")
    probe = _new(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata=pem.decode("latin-1"))
    except ssl.SSLError as error:
        raise TlsFileError(key, f"{path}: a certificate in it cannot be read: {error}") from None
    return probe


def _load_trust(context: ssl.SSLContext, key: str, ca_file: str) -> None:
    """Trust the CA certificates in `ca_file` (and only those) for verifying peers."""
    pem = _read(key, ca_file)
    if _parse_certificates(key, ca_file, pem).cert_store_stats()["x509_ca"] == 0:
        problem = f"{ca_file} holds no CA certificate (is it a server's certificate?)"
        raise TlsFileError(key, problem)
    context.load_verify_locations(cadata=pem.decode("latin-1"))
