"""Test certificates made with the openssl command line: a CA, server certificates for
127.0.0.1 and localhost, client certificates, and a second CA that nobody trusts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Authority:
    """A CA in ``folder`` that issues certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.name = folder, name
        self.cert, self.key = folder / f"{name}.crt", folder / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
            cwd=folder,
        )  # fmt: skip
        self.issued = 0

    def issue(self, common_name: str, *, server: bool = True) -> Pair:
        """A certificate for ``common_name`` (servers: for 127.0.0.1 and localhost)."""
        self.issued += 1
        stem = self.folder / f"{self.name}-{common_name}-{self.issued}"
        key, csr, cert = (
            stem.with_suffix(".key"),
            stem.with_suffix(".csr"),
            stem.with_suffix(".crt"),
        )
        extensions = stem.with_suffix(".ext")
        usage = "serverAuth" if server else "clientAuth"
        lines = [f"extendedKeyUsage={usage}"]
        if server:
            lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}", cwd=self.folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
            cwd=self.folder,
        )  # fmt: skip
        return Pair(cert, key)
