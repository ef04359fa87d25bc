"""Certificates for the TLS tests, made with the `openssl` command: a private CA, a node
certificate for 127.0.0.1 and localhost (server and client use, as router and replicas need),
a client-only certificate, and a certificate from another CA that nobody trusts.

Keys are P-256 (fast to make); everything is valid for a day.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPENSSL", "Pki", "make_pki"]

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the private CA's certificate
    node_cert: Path  # for 127.0.0.1 and localhost; serverAuth and clientAuth
    node_key: Path
    client_cert: Path  # clientAuth only
    client_key: Path
    stranger_cert: Path  # for 127.0.0.1, signed by a CA nobody here trusts
    stranger_key: Path
    stranger_ca: Path


def _run(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN=modelplex test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(
    directory: Path, name: str, ca: tuple[Path, Path], *, usage: str, san: str | None
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
    extensions = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if san is not None:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _run(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", extensions,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Make the certificates in `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    stranger_ca = _ca(directory, "stranger-ca")
    here = "IP:127.0.0.1,DNS:localhost"
    node = _leaf(directory, "node", ca, usage="serverAuth,clientAuth", san=here)
    client = _leaf(directory, "client", ca, usage="clientAuth", san=None)
    stranger = _leaf(directory, "stranger", stranger_ca, usage="serverAuth,clientAuth", san=here)
    return Pki(
        ca=ca[0],
        node_cert=node[0],
        node_key=node[1],
        client_cert=client[0],
        client_key=client[1],
        stranger_cert=stranger[0],
        stranger_key=stranger[1],
        stranger_ca=stranger_ca[0],
    )
