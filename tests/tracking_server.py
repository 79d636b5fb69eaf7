"""A real PostgreSQL and a real `mlflow server` on it, on localhost, configured as docker/compose.yaml does.

PostgreSQL is Debian's `postgresql` package (`make test-postgres` installs it): `initdb` and `pg_ctl` in a
private folder, listening on 127.0.0.1 at a free port, its socket in that folder. PostgreSQL refuses to run
as root: as root the server commands run as the `postgres` user (the package creates it) through `runuser`.
The MLflow server is started with the mlflow service's own command, read from docker/compose.yaml, with
the database user, password and name from docker/env.example; only where it listens and where its
database and artifacts are (the service's `environment:` keys below) differ from the compose stack.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from slurm_cluster import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT_ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / "docker" / "env.example"
# The mlflow service's environment keys that say where it runs: the test gives them its own values.
LOCATION_KEYS = ("POSTGRES_HOST", "POSTGRES_PORT", "MLFLOW_HOST", "MLFLOW_PORT", "MLFLOW_ARTIFACTS")
SERVER_USER = "postgres"  # who runs PostgreSQL when the tests run as root


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines of an env file (compose's format without quotes or interpolation)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def unescape(value: str) -> str:
    """Compose's `$$` is a literal `$` (left for the container's shell); refuse compose-time `${...}`."""
    assert "${" not in value.replace("$$", ""), f"compose-time interpolation in {value!r}"
    return value.replace("$$", "$")


def postgres_bin() -> Path | None:
    """The folder of initdb, pg_ctl, psql: Debian's newest installed PostgreSQL, else PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


class Postgres:
    """`start()` runs initdb and pg_ctl and creates the user and database; `stop()`/`start_again()` for the
    database-down test; `destroy()` stops it and removes its folder."""

    def __init__(self, user: str, password: str, database: str):
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (`make test-postgres` apt-installs postgresql)")
        self.user, self.password, self.database = user, password, database
        self.as_user: list[str] = []
        # a folder the server's user owns: pytest's tmp folders are private to the user running the tests
        self.root = Path(tempfile.mkdtemp(prefix="sweep-postgres-"))
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(f"running as root, and no `{SERVER_USER}` user to run PostgreSQL as") from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()

    def server_command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        out = self.server_command(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256")
        if out.returncode:
            raise RuntimeError(f"initdb failed: {out.stderr[-2000:]}")
        self.start_again()
        self.sql(f'CREATE ROLE "{self.user}" LOGIN PASSWORD {literal(self.password)}',
                 f'CREATE DATABASE "{self.database}" OWNER "{self.user}"')

    def start_again(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
        out = self.server_command(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                  "-t", "60", "-o", options, "start", timeout=90)
        if out.returncode:
            raise RuntimeError(f"pg_ctl start failed: {out.stdout[-1000:]}{out.stderr[-1000:]}\n{self.logs()}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.server_command(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=90)

    def sql(self, *statements: str) -> None:
        """Run statements as the superuser over the server's socket."""
        args = [str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p",
                str(self.port), "-U", "postgres", "-d", "postgres"]
        for statement in statements:
            args += ["-c", statement]
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"psql failed: {out.stderr[-2000:]}")

    def url(self, database: str | None = None, password: str | None = None) -> str:
        """A client's URL of `database` (default: the user's) with `password` in it (default: the user's;
        "": none, the client takes it from PGPASSWORD)."""
        password = self.password if password is None else password
        user = f"{self.user}:{urllib.parse.quote(password, safe='')}" if password else self.user
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database or self.database}"

    def create_database(self, name: str) -> str:
        """A new database that the user owns; returns its URL."""
        self.sql(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def logs(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log}\n" + "\n".join(text.splitlines()[-lines:])


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ServerProcess:
    """A server in its own process group on 127.0.0.1:`port`: started and waited for on /health, stopped
    with its whole group (a CLI and its workers), its output in `log`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path, port: int):
        self.name, self.command, self.env, self.cwd, self.log = name, command, env, cwd, log
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s} s:\n{self.logs()}")

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def logs(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log}\n" + "\n".join(text.splitlines()[-lines:])


class MlflowServer(ServerProcess):
    """The compose file's mlflow service command, run on this machine against `postgres` (its database
    migrations run before /health answers: tens of seconds here)."""

    def __init__(self, root: Path, postgres: Postgres):
        service = compose()["services"]["mlflow"]
        environment = {k: str(v) for k, v in service["environment"].items()}
        missing = [k for k in LOCATION_KEYS if k not in environment]
        assert not missing, f"docker/compose.yaml's mlflow service no longer sets {missing}: update this test"
        port = free_port()
        self.artifacts = root / "mlartifacts"
        location = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(postgres.port), "MLFLOW_HOST": "127.0.0.1",
                    "MLFLOW_PORT": str(port), "MLFLOW_ARTIFACTS": str(self.artifacts)}
        # the env file first, then the service's environment (compose's precedence), then where it runs here
        env = {**os.environ, **env_file(), **environment, **location,
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        super().__init__("mlflow server", [unescape(str(part)) for part in service["command"]], env, root,
                         root / "mlflow-server.log", port)
