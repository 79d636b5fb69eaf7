"""Processes and their runs: who owns a RUNNING run, whether it is still alive, stopping a sweep's jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

_stop_signal: int | None = None  # the signal that asked this process's job to stop
_job_running = False  # a job runs in this process now
_launcher_pid: int | None = None  # the sweep's launching process (set there)


class Terminated(SystemExit):
    """A job stopped by a signal: raised at the job's next step, so that its run closes as failed."""

    def __init__(self, signum: int):
        super().__init__(f"killed by signal {signum}")
        self.signum = signum


def request_stop(signum: int, _frame=None) -> None:
    """A job's SIGTERM handler: remember the stop; the job raises `Terminated` at its next step
    (`raise_if_stopped`). Raising from the handler itself can land in a weakref callback or inside a
    lock's critical section (tqdm's, SQLite's), where the exception is swallowed or the lock stays
    held: such a job hung with its run RUNNING. A second signal changes nothing. Between jobs (an idle
    worker) there is no run to close: the process exits at once."""
    global _stop_signal
    if not _job_running:
        os._exit(128 + signum)
    if _stop_signal is None:
        _stop_signal = signum


def raise_if_stopped() -> None:
    """Called between steps of every long loop of a job."""
    if _stop_signal is not None:
        raise Terminated(_stop_signal)


@contextlib.contextmanager
def job_running():
    """Marks the time a job runs in this process (the launching process defers its stop to it)."""
    global _job_running
    _job_running = True
    try:
        yield
    finally:
        _job_running = False


def is_job_running() -> bool:
    return _job_running


def mark_launching_process() -> None:
    global _launcher_pid
    _launcher_pid = os.getpid()


def is_launching_process() -> bool:
    """True in the process that launched the sweep (a job of joblib with one worker runs there)."""
    return _launcher_pid == os.getpid()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/<pid>/stat): a pid reused later differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tag(pid: int | None = None) -> str:
    """`host:pid:start` of this process, stored on every run it opens."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def is_orphaned(tag: str | None) -> bool:
    """True when the process that opened a run is known to be gone (same host, pid dead or reused).
    Runs from other hosts, or without the tag, are never judged: they may still be alive."""
    if not tag or tag.count(":") < 2:
        return False
    host, pid, start = tag.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    now = _start_time(int(pid))
    return now is None or (start != "?" and now != start)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), from /proc; empty where /proc is missing."""
    tree, out, todo = _children(), [], [os.getpid() if pid is None else pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def terminate_descendants(timeout_s: float = 30.0) -> None:
    """SIGTERM every process below this one (jobs close their runs as failed on it), then wait for those
    that act on it. Helpers that ignore SIGTERM (the resource trackers of multiprocessing and joblib) exit
    when this process does: waiting for them would only add the timeout."""
    pids = [pid for pid in descendants() if not _ignores_sigterm(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in pids:  # reap our direct children so that they do not linger as zombies
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if all(_is_zombie_or_gone(pid) for pid in pids):
            return
        time.sleep(0.1)


def _ignores_sigterm(pid: int) -> bool:
    """From the SigIgn mask in /proc/<pid>/status."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigIgn:")), 0)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
