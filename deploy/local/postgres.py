"""A throwaway PostgreSQL server from the installed binaries, for tests, the bench and local
clusters.

Runs `initdb` and `pg_ctl` as the `postgres` user when we are root (PostgreSQL refuses to run
as root), listens on loopback on a free port with its socket in the data folder, and is removed
with everything in it by `stop()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from deploy.ports import free_port


class PostgresUnavailable(RuntimeError):
    """The server could not be started here (no binaries, no postgres user, ...)."""


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    raise PostgresUnavailable("no PostgreSQL binaries (pg_ctl) on PATH or in /usr/lib/postgresql")


class PostgresServer:
    def __init__(self, *, durable: bool = False, port: int | None = None) -> None:
        self.bin_dir = _bin_dir()
        self.port = port or free_port()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="tideflow-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresUnavailable("running as root and there is no 'postgres' user") from e
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    @property
    def user(self) -> str:
        return "postgres"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int | None:
        """The postmaster's process id while the server runs (first line of postmaster.pid)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        try:
            return subprocess.run(
                args,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                extra_groups=[] if self._user else None,
                cwd=self.root,
            )
        except subprocess.CalledProcessError as e:
            raise PostgresUnavailable(f"{args[0]} failed: {e.stderr or e.stdout}") from e

    def start(self) -> PostgresServer:
        if not self.data_dir.exists():
            self._run(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )  # fmt: skip
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
                "-c shared_buffers=128MB",
                f"-c fsync={'on' if self.durable else 'off'}",
                f"-c synchronous_commit={'on' if self.durable else 'off'}",
                f"-c full_page_writes={'on' if self.durable else 'off'}",
            ]
        )
        try:
            self._run(
                str(self.bin_dir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-o", options,
                "-w", "-t", "60",
                "start",
            )  # fmt: skip
        except PostgresUnavailable as e:
            raise PostgresUnavailable(f"{e}\nserver log:\n{self.logs()}") from e
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"server did not accept connections: {self.logs()}")
            time.sleep(0.1)

    def stop(self, *, mode: str = "fast") -> None:
        if self.data_dir.exists():
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                self._run(
                    str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"
                )

    def restart(self) -> None:
        """Stop and start on the same port and data (for fault tests)."""
        self.stop()
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            str(self.bin_dir / "psql"),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", self.user,
            "-d", database,
            "-v", "ON_ERROR_STOP=1",
            "-At",
            "-c", sql,
        ).stdout  # fmt: skip

    def logs(self) -> str:
        try:
            return self.log_file.read_text()[-4000:]
        except OSError:
            return "(no server log)"

    def remove(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)
