"""A throwaway PostgreSQL server for the tests marked ``postgres``: started once per session on 127.0.0.1
(a free port, a temporary data directory, trust authentication), as an unprivileged user when the tests
run as root (PostgreSQL refuses to run as root), and stopped at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

UNPRIVILEGED = "tfgrpo-pg"


class NoServer(Exception):
    """No PostgreSQL server could be started: the message says why (the tests skip with it)."""


def server_binaries() -> Path:
    """The directory of ``initdb``/``pg_ctl``: $TFGRPO_PG_BIN, the PATH, or Debian's /usr/lib/postgresql/N."""
    candidates = [os.environ.get("TFGRPO_PG_BIN", "")]
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[::-1]
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise NoServer("PostgreSQL server binaries not found (Debian: apt-get install postgresql; .ci/run does)")


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in (UNPRIVILEGED, "postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise NoServer(f"running as root and cannot create an unprivileged user: {made.stderr.strip()}")
    return UNPRIVILEGED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield ``postgresql://tfgrpo@127.0.0.1:PORT/postgres`` of a fresh server; stop and delete it after."""
    bin_dir = server_binaries()
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="tfgrpo-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
    os.chmod(root, 0o700)
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), user=user, cwd=root, capture_output=True, text=True, timeout=120)

    try:
        made = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "tfgrpo", "--auth=trust", "-E", "UTF8")
        if made.returncode != 0:
            raise NoServer(f"initdb failed: {(made.stderr or made.stdout).strip()[-500:]}")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100"
        started = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        if started.returncode != 0:
            text = log.read_text() if log.exists() else started.stderr
            raise NoServer(f"PostgreSQL did not start: {text.strip()[-500:]}")
        try:
            yield f"postgresql://tfgrpo@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def new_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the test server; returns its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name
