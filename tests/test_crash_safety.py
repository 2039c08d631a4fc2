"""SIGKILL in the middle of `simsearch index`: what was committed stays usable, the rest follows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from conftest import REPO, save_tiny_model
from retrieval.index import open_index
from retrieval.store.schema import STATUS_OK, ImageRecord


def committed(index_dir: Path) -> int:
    if not (index_dir / "index.db").exists():
        return 0
    try:
        with open_index(index_dir).sessions() as session:
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "index", "p", "--model", str(slow_model), "--batch-size", "1",
         "--workers", "1"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    deadline = started + 120
    while committed(index_dir) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = committed(index_dir)
    print(f"killed after {done} of {total} images, {time.monotonic() - started:.1f} s after the start")
    assert 0 < done < total, f"the kill should land mid-run ({done} of {total} committed)"

    reopened = open_index(index_dir)
    assert len(reopened.vector_index()) == done, "FAISS and the database agree after the restart"
    query = simsearch("query", str(photos[0]), "-k", "3", "--json", cwd=tmp_path)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)[0]["neighbours"][0]["path"] == str(photos[0])

    finish = simsearch("index", "p", "--workers", "0", cwd=tmp_path)
    assert finish.returncode == 0, finish.stderr
    assert committed(index_dir) == total
    assert len(open_index(index_dir).vector_index()) == total
