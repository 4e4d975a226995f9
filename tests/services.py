"""The suite's own Redis and PostgreSQL: nothing here touches a service the suite did not start.

- Redis: a fresh `redis-server` on a free port, in a temp folder, keeping nothing on disk.
- PostgreSQL: a database created for the run and dropped after it, on the server at
  $REF2IMG_TEST_POSTGRES (default: this user on 127.0.0.1:5432); where none answers, a cluster of
  the suite's own, made with `initdb` in a temp folder and stopped after the run.

A missing binary skips the tests that need it, with the reason. CI sets REF2IMG_REQUIRE_SERVICES=1,
which turns those skips into failures, so that CI always runs them.
"""

from __future__ import annotations

import getpass
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REQUIRE_ENV = "REF2IMG_REQUIRE_SERVICES"


def missing(reason: str):
    """Skip (a developer's machine may lack the service), or fail where CI demands every test run."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: required here)")
    pytest.skip(reason)


def binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        missing(f"{name} is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout_s:.0f} s")


class RedisServer:
    """`redis-server` of the test's own; `stop()` then `start()` is a restart on the same port."""

    def __init__(self, directory: Path):
        self.binary = binary("redis-server")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis.Redis(port=self.port).ping(), f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as a crash would: whatever it held in memory is gone
            self.process.wait(10)


class PostgresDatabase:
    """A database of the run's own on a reachable server, or on a cluster made for the run."""

    def __init__(self):
        self.cluster: Path | None = None
        server = os.environ.get(
            "REF2IMG_TEST_POSTGRES", f"postgresql+psycopg://{getpass.getuser()}@127.0.0.1:5432/postgres"
        )
        if not _answers(server):
            # Not under pytest's temp folders: those are private to this user, and the cluster's
            # owner must reach it.
            server = self._own_cluster(Path(tempfile.mkdtemp(prefix="ref2img-test-pg-")))
        self.name = f"ref2img_test_{secrets.token_hex(4)}"
        self.server = server
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.url = server.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self.cluster is not None:
            subprocess.run(
                self._as_owner(binary("pg_ctl"), "-D", str(self.cluster / "data"), "-m", "immediate", "stop"),
                capture_output=True,
                timeout=60,
            )
            shutil.rmtree(self.cluster, ignore_errors=True)

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.server, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(statement))
        finally:
            engine.dispose()

    def _own_cluster(self, directory: Path) -> str:
        initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
        self.cluster = directory
        data, port = directory / "data", free_port()
        if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to `postgres`
            shutil.chown(directory, "postgres")
        run = lambda *args: subprocess.run(self._as_owner(*args), capture_output=True, text=True, timeout=120)  # noqa: E731
        made = run(initdb, "-D", str(data), "-U", "ref2img", "--auth=trust", "--no-sync")
        if made.returncode != 0:
            missing(f"no PostgreSQL answers and initdb failed: {made.stderr.strip()[-300:]}")
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "postgres.log"), "-w", "start")
        if started.returncode != 0:
            missing(f"the suite's own PostgreSQL did not start: {started.stderr.strip()[-300:]}")
        return f"postgresql+psycopg://ref2img@127.0.0.1:{port}/postgres"

    def _as_owner(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _answers(url: str) -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()
