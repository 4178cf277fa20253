"""Child processes that never outlive us (the broker, the worker, the simulator), and
the loopback ports they listen on.

Each child gets its own process group (so a stop reaches its children too) and, on
Linux, PR_SET_PDEATHSIG, so the kernel kills it if we are killed with -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent(parent: int) -> None:
    """Runs in the forked child before exec: SIGKILL me when the thread that started me dies."""
    assert _libc is not None
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, tied to our life; output to `log_path` if given."""
    out: IO[bytes] | None = None
    if log_path is not None:
        out = open(log_path, "ab")  # noqa: SIM115 (the child owns it; closed when we close ours below)
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=partial(_die_with_parent, os.getpid()) if _libc is not None else None,
        )
    finally:
        if out is not None:
            out.close()


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM the child's whole group, SIGKILL what is left after `grace` seconds; its exit code."""
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("pid %d ignored SIGTERM for %g s; killing it", proc.pid, grace)
    finally:  # also on Ctrl-C while waiting: nothing of the group may survive
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()  # in case it is not (or no longer) its group's leader
        proc.wait()
    return proc.returncode


def free_ports(count: int = 1) -> list[int]:
    """Distinct loopback ports that are free now, each with the port after it free too (a worker's
    query API listens next to its /metrics unless told otherwise); all held open until all are picked.

    Below the kernel's ephemeral range: a port taken from it (`bind(0)`) can meanwhile become the
    local end of some client's outgoing connection (a Kafka client's), and the server started on it
    then fails with "address already in use" (seen in `monitor bench`'s two-worker case)."""
    low = _ephemeral_start()
    with contextlib.ExitStack() as stack:
        picked: list[int] = []
        while len(picked) < count:
            port = random.randrange(max(1024, low - 12_000), low - 1)
            if {port - 1, port, port + 1} & set(picked):
                continue
            try:
                for p in (port, port + 1):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
            except OSError:
                continue
            picked.append(port)
        return picked


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
