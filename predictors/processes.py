"""Start and stop the project's own server processes (router, local predictors) on loopback.

Used by the demo, the black-box tests and the benchmarks, so all three run the same commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from infergraph.predictors import servers

CLI = str(Path(sys.executable).with_name("infergraph"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, never shadowing the stdlib with the repo's folders."""
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    env.update(extra or {})
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class ServerProcess:
    """A child process serving HTTP on loopback, started and stopped synchronously."""

    def __init__(
        self,
        argv: Sequence[str],
        ready_url: str,
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.ready_url = ready_url
        self.env = child_env(env)
        self.log_path = log_path
        # Whether ready_url answers 200 (default: asked from here; a process in another network
        # namespace is asked from in there).
        self.probe = probe or _answers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Its own process group, so stopping it also stops what it started (tritonserver, vLLM's
        # engine processes).
        # It runs outside the repository: Python run from its root would take the operator/
        # folder for the standard library's operator module.
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=tempfile.gettempdir(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:3]} exited with {self.process.returncode} before it was ready"
                    f"{f'; see {self.log_path}' if self.log_path else ''}"
                )
            if self.probe(self.ready_url):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.argv[:3]} not ready at {self.ready_url} after {timeout} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        code = process.poll()
        self._signal_group(signal.SIGTERM)
        if code is None:
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                code = process.wait()
        self._wait_group_gone(timeout)
        return code

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _wait_group_gone(self, timeout: float) -> None:
        """Children of the process may outlive it briefly: wait, then kill what is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)  # type: ignore[union-attr]
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)

    def __enter__(self) -> Self:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def predictor(port: int, *, models: bool = False, log_path: Path | None = None) -> ServerProcess:
    argv = [CLI, "predictor", "--port", str(port)] + (["--models"] if models else [])
    ready = servers.V2_HEALTH_READY  # the local predictor answers v2 health like Triton and KServe
    return ServerProcess(argv, f"http://127.0.0.1:{port}{ready}", log_path=log_path)


def router(
    port: int,
    *source: str,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
    log_path: Path | None = None,
) -> ServerProcess:
    """``infergraph router`` on loopback; ``source`` is e.g. ``("--graph-json", text)``."""
    argv = [CLI, "router", *source, "--host", "127.0.0.1", "--port", str(port), *extra]
    return ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", env=env, log_path=log_path)


async def stop_all(processes: Sequence[ServerProcess]) -> None:
    """Stop processes concurrently (each stop waits for its child)."""
    with contextlib.suppress(Exception):
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


def children_of(pid: int, marker: bytes = b"") -> list[int]:
    """Live child processes of ``pid`` whose command line contains ``marker``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and marker in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)
