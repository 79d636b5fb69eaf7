"""Processes and their runs: who owns a RUNNING run, whether it is still alive, stopping a sweep's jobs."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


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
    """SIGTERM every process below this one (jobs close their runs as failed on it), then wait for them."""
    pids = descendants()
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


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
