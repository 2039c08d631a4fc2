"""Real Ray clusters on this machine for the Ray tests and `benchmarks/ray_overhead.py`: `ray start --block` for
each node, in sessions of their own (`process_sessions`), killed whole, agents and workers included, when the
block ends or the run is interrupted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import process_sessions
from postgres_server import free_port

START_SECONDS = 60


@contextmanager
def ray_left_as_found() -> Iterator[None]:
    """The block begins with no Ray joined in this process; after it (also when it fails or the run is interrupted)
    a Ray it joined is stopped and the environment is as it was (`ray.init` sets variables in it)."""
    import ray

    ray.shutdown()  # a Ray joined by a test elsewhere, if any
    environment = dict(os.environ)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)


@contextmanager
def ray_cluster(cpus_per_node: Sequence[int] = (2,), python: Path | str = sys.executable, cwd: Path | None = None,
                auth: str = "disabled") -> Iterator[str]:
    """A cluster of one node per entry (the first the head), run by `python` with `RAY_AUTH_MODE=auth`; its
    address, once every node has joined and is ready for jobs, while the block runs."""
    port = free_port()
    env = process_sessions.child_environment({"RAY_AUTH_MODE": auth})
    nodes = [_node(python, cwd, env, "--head", "--include-dashboard=false", "--port", str(port), "--num-cpus",
                   str(cpus_per_node[0]))]
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(port):
            assert nodes[0].poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.2)
        address = f"127.0.0.1:{port}"
        for cpus in cpus_per_node[1:]:
            nodes.append(_node(python, cwd, env, "--address", address, "--num-cpus", str(cpus)))
        _wait_for_cpus(python, env, address, sum(cpus_per_node))  # every raylet up: the head's port answers first
        yield address
    finally:
        for node in reversed(nodes):
            process_sessions.end(node)  # the node, its raylet (and GCS), agents and workers


def _node(python: Path | str, cwd: Path | None, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return process_sessions.start([str(python), "-m", "ray.scripts.scripts", "start", "--block",
                                   "--disable-usage-stats", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for_cpus(python: Path | str, env: dict[str, str], address: str, cpus: int) -> None:
    probe = f"import ray, time; ray.init(address='{address}', logging_level='ERROR')\n" \
            f"while ray.cluster_resources().get('CPU', 0) < {cpus}: time.sleep(0.5)"
    joined = process_sessions.run([str(python), "-c", probe], timeout=120, env=env, capture_output=True)
    assert joined.returncode == 0, f"a driver could not join the cluster at {address}: {joined.stderr[-500:]!r}"
