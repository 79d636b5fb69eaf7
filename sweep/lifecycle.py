"""Processes and their runs: who owns a RUNNING run, whether it is still alive, stopping a sweep's jobs.

A worker process of the local launcher watches the sweep's launching process (`watch_launcher`): when
that process is killed outright (SIGKILL), the worker stops as it would on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

_stop_signal: int | None = None  # the signal that asked this process's job to stop
_job_running = False  # a job runs in this process now
_stop_reason: str | None = None  # why, when it was not a signal from outside (the launching process is gone)
_launcher_pid: int | None = None  # the sweep's launching process (set there)
_launcher_tag: str | None = None  # its `process_tag`, in a worker process of the local launcher
WATCH_LAUNCHER_S = 1.0  # how often a worker checks that the launching process is alive
STOP_WAIT_S = 30.0  # how long `stop_process` waits for a stopped job to close its run and exit


class Terminated(SystemExit):
    """A job stopped by a signal (or because its sweep's launching process is gone): raised at the job's
    next step, so that its run closes as failed."""

    def __init__(self, signum: int, reason: str | None = None):
        super().__init__(reason or f"killed by signal {signum}")
        self.signum = signum


def request_stop(signum: int, _frame=None, reason: str | None = None) -> None:
    """A job's SIGTERM handler: remember the stop; the job raises `Terminated` at its next step
    (`raise_if_stopped`). Raising from the handler itself can land in a weakref callback or inside a
    lock's critical section (tqdm's, SQLite's), where the exception is swallowed or the lock stays
    held: such a job hung with its run RUNNING. A second signal changes nothing. Between jobs (an idle
    worker) there is no run to close: the process exits at once. `reason`: the run's failure reason
    when not "killed by signal N"."""
    global _stop_signal, _stop_reason
    if not _job_running:
        os._exit(128 + signum)
    if _stop_signal is None:
        _stop_signal, _stop_reason = signum, reason


def raise_if_stopped() -> None:
    """Called between steps of every long loop of a job."""
    if _stop_signal is not None:
        raise Terminated(_stop_signal, _stop_reason)


@contextlib.contextmanager
def job_running():
    """Marks the time a job runs in this process (the launching process defers its stop to it); nests."""
    global _job_running
    before, _job_running = _job_running, True
    try:
        yield
    finally:
        _job_running = before


def remember_stop(signum: int) -> None:
    """Note a stop without acting on it: the next `raise_if_stopped` raises (the launching process's
    backstop for an exit its signal handler raised where it may have been swallowed, in a finaliser)."""
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum


def is_job_running() -> bool:
    return _job_running


def mark_launching_process() -> None:
    global _launcher_pid
    _launcher_pid = os.getpid()


def is_launching_process() -> bool:
    """True in the process that launched the sweep (a job of joblib with one worker runs there)."""
    return _launcher_pid == os.getpid()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: [0] the state (Z: a zombie), [19] the
    kernel's start time (a pid reused later differs); None for no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tag(pid: int | None = None) -> str:
    """`host:pid:start` of this process, stored on every run it opens."""
    pid = os.getpid() if pid is None else pid
    stat = _stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[19] if stat else '?'}"


def _local_process(tag: str | None) -> tuple[int, str] | None:
    """(pid, start) of a `process_tag` of this host; None for another host's, or no tag."""
    if not tag or tag.count(":") < 2:
        return None
    host, pid, start = tag.rsplit(":", 2)
    return (int(pid), start) if host == socket.gethostname() and pid.isdigit() else None


def is_orphaned(tag: str | None) -> bool:
    """True when the process of a `process_tag` is known to be gone (same host, pid dead, a zombie, or
    reused). Processes of other hosts, or no tag, are never judged: they may still be alive."""
    if (local := _local_process(tag)) is None:
        return False
    pid, start = local
    stat = _stat(pid)  # read once: the process can end meanwhile
    return stat is None or stat[0] == "Z" or (start != "?" and stat[19] != start)


def stop_process(tag: str | None, timeout_s: float = STOP_WAIT_S) -> None:
    """SIGTERM the live process of a `process_tag` of this host (a job closes its run as failed at its next
    step, then exits), and wait up to `timeout_s` for it to be gone."""
    if (local := _local_process(tag)) is None or is_orphaned(tag):
        return
    try:
        os.kill(local[0], signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while not is_orphaned(tag) and time.monotonic() < deadline:
        time.sleep(0.1)


def watch_launcher(tag: str) -> None:
    """In a worker process of the local launcher (its initializer): remember the sweep's launching process
    (its `process_tag`, which the runs of this process carry as TAG_LAUNCHER_PROCESS) and stop this process
    once that one is gone (killed with SIGKILL): a running job closes its run as failed at its next step,
    an idle worker exits at once. Checked every WATCH_LAUNCHER_S from a daemon thread."""
    global _launcher_tag
    _launcher_tag = tag
    threading.Thread(target=_stop_when_gone, args=(tag,), name="watch-launcher", daemon=True).start()


def _stop_when_gone(tag: str) -> None:
    while not is_orphaned(tag):
        time.sleep(WATCH_LAUNCHER_S)
    while True:  # asked again until no job runs here: then request_stop exits the process
        request_stop(signal.SIGTERM, reason=f"the launching process {tag} of its sweep is gone")
        time.sleep(WATCH_LAUNCHER_S)


def launcher_tag() -> str | None:
    """The launching process that this worker process watches (None outside a local launcher's worker)."""
    return _launcher_tag


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
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"
