"""Starts a fresh `lethe serve` for a test: its own data and keys directories, and on
PostgreSQL (`LETHE_TEST_ENGINE=postgres`) its own event and key-vault databases, created through
`LETHE_TEST_POSTGRES_URL` and dropped afterwards.

`LETHE_BIN` is the `lethe` binary (the Rust test that runs this suite sets it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

STARTUP_SECONDS = 60


def engine() -> str:
    return os.environ.get("LETHE_TEST_ENGINE", "sqlite")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class LetheServer:
    """A running `lethe serve`; `url` and `admin_token` reach it. Use as a context manager."""

    def __init__(self) -> None:
        binary = os.environ.get("LETHE_BIN")
        if not binary:
            msg = "LETHE_BIN must name the lethe binary (cargo build; target/debug/lethe)"
            raise RuntimeError(msg)
        self.dir = tempfile.mkdtemp(prefix="lethe-py-")
        self.admin_token = secrets.token_hex(24)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.databases: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
        env.update(
            {
                "LETHE_DATA_DIR": os.path.join(self.dir, "lethe-data"),
                "LETHE_KEYS_DIR": os.path.join(self.dir, "lethe-keys"),
                "LETHE_LISTEN": f"127.0.0.1:{self.port}",
                "LETHE_ADMIN_TOKEN": self.admin_token,
                "RUST_LOG": "warn",
            }
        )
        if engine() == "postgres":
            base = os.environ["LETHE_TEST_POSTGRES_URL"]
            suffix = secrets.token_hex(6)
            events, vault = f"lethe_py_{suffix}", f"lethe_pyv_{suffix}"
            self._admin_sql(base, [f"CREATE DATABASE {events}", f"CREATE DATABASE {vault}"])
            self.databases = [events, vault]
            env["LETHE_DATABASE_URL"] = _database_url(base, events)
            env["LETHE_KEYVAULT_URL"] = _database_url(base, vault)
        self._command = [binary, "serve"]
        self._env = env
        self.log = open(os.path.join(self.dir, "server.log"), "ab")  # noqa: SIM115
        self._spawn()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            self._command, cwd=self.dir, env=self._env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stops the server and starts it again on the same port, data and databases."""
        self._terminate()
        self._spawn()

    @staticmethod
    def _admin_sql(base: str, statements: list[str]) -> None:
        import psycopg  # only needed on PostgreSQL

        with psycopg.connect(base, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        with open(os.path.join(self.dir, "server.log"), "rb") as f:
            log = f.read().decode("utf-8", "replace")
        msg = f"lethe serve did not become ready:\n{log}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        self._terminate()
        if self.log.closed:
            return
        self.log.close()
        if self.databases:
            base = os.environ["LETHE_TEST_POSTGRES_URL"]
            self._admin_sql(base, [f"DROP DATABASE IF EXISTS {d} WITH (FORCE)" for d in self.databases])
            self.databases = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LetheServer:
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()
