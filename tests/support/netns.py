"""A network namespace of the tests' own, so that containers and servers can use the ports
their images fix (8080) without meeting anything else on the machine.

Commands run inside it with ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and
forks: see the cluster notes). ``http`` makes a request from inside it with curl.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Netns:
    def __init__(self, prefix: str = "igtest") -> None:
        self.name = f"{prefix}-{secrets.token_hex(3)}"
        self.path = f"/run/netns/{self.name}"

    @classmethod
    def named(cls, name: str) -> Netns:
        """A namespace of a fixed name (one at a time: the cluster tier's)."""
        netns = cls()
        netns.name, netns.path = name, f"/run/netns/{name}"
        return netns

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", *command]

    def run(self, command: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def http(
        self,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Reply:
        """One request from inside the namespace; status 0 when nothing answered."""
        command = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout)]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        if body is not None:
            command += ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                        "@-"]  # fmt: skip
        done = subprocess.run(
            self.argv([*command, url]),
            input=body,
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
        payload, _, status = done.stdout.rpartition(b"\n")
        return Reply(int(status or b"0"), payload)

    def wait_for(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http(url, timeout=2).status == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{url} did not answer 200 within {timeout} s in {self.name}")
