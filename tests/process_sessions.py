"""Commands the tests start in sessions of their own, each killed whole when it is done with: the command and all
it started. A local Ray's raylet, GCS, agents and workers stay in the session of the process that started them
(the workers in process groups of their own, so killing a process group misses them), so no Ray that a test
starts outlives it, even when the run is interrupted: Ctrl-C (pytest tears the test down), SIGTERM or SIGHUP (the
sessions are killed before the signal's own action), or an exit without teardown (at the interpreter's exit).

Their environment is this process's, less the variables that a Ray joined in this process set in it
(`ray.init` sets `RAY_AUTH_MODE`, `RAY_USAGE_STATS_ENABLED`, `PYTHONBREAKPOINT` and others and never unsets
them; `simsearch index --ray` run in this process sets its own `RAY_*` defaults): a command a test starts sees
what the user's shell would give it, whatever tests ran before in this process."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

STARTING_ENVIRONMENT = dict(os.environ)
"""The environment as the test run began, before any Ray was joined in this process."""
KILL_SECONDS = 30
"""How long the processes of a session may take to die once sent SIGKILL."""

_live: dict[int, subprocess.Popen[Any]] = {}
_lock = threading.Lock()
_signals_handled = False


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `RAY_*` and `PYTHONBREAKPOINT` as they were when the run began (a value
    a Ray in this process set, removed), and `extra` on top."""
    def set_by_ray(name: str) -> bool:
        return name.startswith("RAY_") or name == "PYTHONBREAKPOINT"

    environment = {name: value for name, value in os.environ.items() if not set_by_ray(name)}
    environment |= {name: value for name, value in STARTING_ENVIRONMENT.items() if set_by_ray(name)}
    return environment | dict(extra or {})


def start(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(args, **popen)` in a new session, killed by `end` (or at the latest when this process
    exits or is terminated)."""
    _handle_termination()
    process = subprocess.Popen(list(args), start_new_session=True, **popen)
    with _lock:
        _live[process.pid] = process
    return process


def end(process: subprocess.Popen[Any]) -> None:
    """Every process of `process`'s session killed (SIGKILL) and gone, `process` itself reaped."""
    try:
        deadline = time.monotonic() + KILL_SECONDS
        while members := session_processes(process.pid):
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.poll()
            assert time.monotonic() < deadline, f"processes of a test's session outlived SIGKILL: {members}"
            time.sleep(0.05)
        process.wait(timeout=KILL_SECONDS)
    finally:
        with _lock:
            _live.pop(process.pid, None)


def run(args: Sequence[str], timeout: float, **popen: Any) -> subprocess.CompletedProcess[Any]:
    """As `subprocess.run(args, timeout=timeout, **popen)`, in a session of its own that is killed whole when the
    command ends (so a process it left holding its output cannot keep this waiting), when it runs past `timeout`
    (`subprocess.TimeoutExpired`, with what it wrote) or when the run is interrupted."""
    if popen.pop("capture_output", False):
        popen |= {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = start(args, **popen)
    threading.Thread(target=_end_after_exit, args=(process,), daemon=True).start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        end(process)
        exc.stdout, exc.stderr = process.communicate()  # what it wrote before it was killed
        raise
    finally:
        end(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _end_after_exit(process: subprocess.Popen[Any]) -> None:
    process.wait()
    end(process)


def session_processes(session: int) -> dict[int, str]:
    """The live processes (zombies aside) of the session `session`, with their command lines."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
            if int(fields[3]) != session or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                found[int(entry.name)] = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def _end_all() -> None:
    with _lock:
        processes = list(_live.values())
    for process in processes:
        end(process)


def _handle_termination() -> None:
    """Once, from the main thread: the live sessions killed at the interpreter's exit, and before SIGTERM's or
    SIGHUP's own action (where that is still the default: a handler someone else installed is left alone)."""
    global _signals_handled
    if _signals_handled or threading.current_thread() is not threading.main_thread():
        return
    _signals_handled = True
    atexit.register(_end_all)
    for number in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, _terminated)


def _terminated(number: int, frame: object) -> None:
    _end_all()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
