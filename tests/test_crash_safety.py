"""SIGKILL in the middle of `simsearch index`: what was committed stays usable, the rest follows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from conftest import REPO, save_tiny_model
from retrieval.index import open_index
from retrieval.store.schema import STATUS_OK, ImageRecord


def committed(index_dir: Path) -> int:
    if not (index_dir / "index.db").exists():
        return 0
    try:
        with open_index(index_dir).store.reading() as session:
            return session.scalar(select(func.count()).select_from(ImageRecord).where(ImageRecord.status == STATUS_OK)) or 0
    except Exception:
        return 0


def simsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def test_sigkill_mid_run_keeps_the_index_usable(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    total = 300
    photos = make_photos(tmp_path / "p", total, suffix=".jpg", size=(320, 240))
    slow_model = save_tiny_model(tmp_path / "slow.safetensors", seed=0, side=320)  # a run that lasts seconds
    index_dir = tmp_path / ".simsearch"
    log = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "index", "p", "--model", str(slow_model), "--batch-size", "1",
         "--workers", "1"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=log)
    started = time.monotonic()
    deadline = started + 120
    while committed(index_dir) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    errors = (tmp_path / "stderr.txt").read_text()
    done = committed(index_dir)
    print(f"killed after {done} of {total} images, {time.monotonic() - started:.1f} s after the start")
    assert 0 < done < total, f"the kill should land mid-run ({done} of {total} committed); stderr: {errors[-2000:]}"

    reopened = open_index(index_dir)
    assert len(reopened.vector_index()) == done, "FAISS and the database agree after the restart"
    query = simsearch("query", str(photos[0]), "-k", "3", "--json", cwd=tmp_path)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)[0]["neighbours"][0]["path"] == str(photos[0])

    finish = simsearch("index", "p", "--workers", "0", cwd=tmp_path)
    assert finish.returncode == 0, finish.stderr
    assert committed(index_dir) == total
    assert len(open_index(index_dir).vector_index()) == total


def _open_new_index(root: str, results: Any) -> None:
    from retrieval.index import create_index

    try:
        create_index(Path(root))
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(repr(exc))


def test_processes_opening_a_new_index_at_once_all_succeed(tmp_path: Path) -> None:
    """A query (or calibrate) starting beside the first `index` must not make either fail."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(8):
        results = context.Queue()
        processes = [context.Process(target=_open_new_index, args=(str(tmp_path / f"index{attempt}"), results))
                     for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        assert [results.get() for _ in processes] == ["ok"] * 3
