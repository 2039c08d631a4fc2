"""`simsearch index --ray`: the same rows and vectors as a local run, from a real local Ray cluster (2 CPUs)."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

import process_sessions  # noqa: E402
from conftest import REPO, assert_one_line_error, assert_one_line_output, invoke, simsearch  # noqa: E402
from ray_cluster import ray_cluster, ray_left_as_found  # noqa: E402
from indexer import pipeline  # noqa: E402
from retrieval.index import open_index  # noqa: E402


RUN_SECONDS = 120
"""The longest a `simsearch index` process of these tests may run (the slowest takes under 60 s on 2 busy cores)
before the test fails, saying so."""


@pytest.fixture(autouse=True)
def no_ray_before_or_after() -> Iterator[None]:
    """Each test begins with no Ray in this process and this process's environment as it was; after it (also when
    it fails or the run is interrupted) a Ray it joined here is stopped and the variables `ray.init` and
    `simsearch index --ray` set here are removed."""
    with ray_left_as_found():
        yield


@pytest.fixture
def local_ray() -> Iterator[None]:
    """This process joined to a local Ray of 2 CPUs of its own for the test, stopped after it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def indexed_rows(index_dir: Path) -> int:
    """Rows another process's run has committed to the index's SQLite database so far (0 before it exists)."""
    database = index_dir / "index.db"
    if not database.is_file():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
            return int(connection.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0])
    except sqlite3.Error:
        return 0  # the schema is not made yet


def rows(index_dir: Path) -> dict[str, tuple[object, ...]]:
    index = open_index(index_dir)
    known = index.store.known_images(["/"], 0, everything=True)
    return {Path(path).name: (row.status, row.content_hash, row.width, row.height, row.error, row.label)
            for path, row in known.items()}


def vectors(index_dir: Path) -> dict[str, np.ndarray]:
    index = open_index(index_dir)
    ids, data = index.served_vectors()
    row_of = {int(i): r for r, i in enumerate(ids)}
    return {Path(row.path).name: data[row_of[int(row.vector_id)]] for row in index.store.indexed_images()}


def index_locally_and_on_ray(tmp_path: Path, model: Path) -> list[str]:
    """Index 7 photos and a broken file locally and with `--ray local` (joining this process's Ray), asserting the
    same rows and vectors; the arguments both used."""
    (tmp_path / "p" / "cats" / "broken.png").write_bytes(b"not an image")
    base = ["index", "p", "--model", str(model), "--batch-size", "3"]
    local = invoke(*base, "--index", "local", "--workers", "0", cwd=tmp_path)
    assert local.exit_code == 1, local.output  # one file failed
    remote = invoke(*base, "--index", "ray", "--ray", "local", cwd=tmp_path)
    assert remote.exit_code == 1, remote.output
    assert "added 7" in remote.output and "failed 1" in remote.output
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    mine, theirs = vectors(tmp_path / "local"), vectors(tmp_path / "ray")
    assert mine.keys() == theirs.keys() and len(mine) == 7
    for name in mine:
        np.testing.assert_allclose(theirs[name], mine[name], atol=1e-5)
    return base


def test_a_ray_run_gives_the_rows_and_vectors_of_a_local_run(tmp_path: Path, tiny_model_file: Path, make_photos,  # type: ignore[no-untyped-def]
                                                            local_ray: None) -> None:
    make_photos(tmp_path / "p" / "cats", 7)
    base = index_locally_and_on_ray(tmp_path, tiny_model_file)
    assert not (tmp_path / "ray" / "ray-shards").exists(), "each batch goes into the database, no file beside it"
    again = invoke(*base, "--index", "ray", "--ray", "local", cwd=tmp_path)
    assert "skipped 7 unchanged" in again.output, "incremental as a local run"
    assert ray.is_initialized(), "a Ray this process had joined before the run is left to it"


def test_a_driver_killed_mid_job_leaves_whole_batches_and_a_rerun_finishes(
        tmp_path: Path, tiny_model_file: Path, make_photos, local_ray: None,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "p", 9)
    base = ["index", "p", "--index", "idx", "--model", str(tiny_model_file), "--batch-size", "3", "--ray", "local"]
    real = pipeline._batch_changes
    written = []

    def dies_after_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(written) == 2:
            raise KeyboardInterrupt  # the driver killed between two batches
        written.append(1)
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_batch_changes", dies_after_two)
        killed = invoke(*base, cwd=tmp_path)
    assert killed.exit_code != 0
    assert len(rows(tmp_path / "idx")) == 6, "the two whole batches the driver imported"
    finished = invoke(*base, cwd=tmp_path)
    assert finished.exit_code == 0, finished.output
    assert "added 3" in finished.output and "skipped 6 unchanged" in finished.output
    assert len(vectors(tmp_path / "idx")) == 9


def test_an_address_with_no_cluster_is_one_line(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 2)
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--ray", "127.0.0.1:1",
                    cwd=tmp_path)
    assert_one_line_error(result, "no Ray cluster at 127.0.0.1:1")
    assert not (tmp_path / "idx").exists(), "nothing half-written"


def test_a_ray_started_for_the_run_is_stopped_when_it_ends(tmp_path: Path, tiny_model_file: Path,  # type: ignore[no-untyped-def]
                                                          make_photos) -> None:
    make_photos(tmp_path / "p", 2)
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--ray", "local", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "added 2" in result.output
    assert not ray.is_initialized(), "stopped with its job, not left to the interpreter's exit"


def test_a_cluster_with_gpus_decodes_in_tasks_for_its_model_actors_with_the_same_results(  # type: ignore[no-untyped-def]
        tmp_path: Path, tiny_model_file: Path, make_photos, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan for GPUs (decode tasks feeding one model actor a GPU) on a local Ray that declares a GPU: the actor
    embeds on whatever device its torch finds (the CPU on a machine without one), and the results must equal a
    local run's."""
    from retrieval.sources import ray_embed

    jobs = []
    real = ray_embed._decode_then_embed
    monkeypatch.setattr(ray_embed, "_decode_then_embed", lambda *args: jobs.append(1) or real(*args))
    make_photos(tmp_path / "p" / "cats", 7)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        index_locally_and_on_ray(tmp_path, tiny_model_file)
    finally:
        ray.shutdown()
    assert jobs == [1], "the job ran as for a GPU"


def test_a_model_actor_killed_mid_job_is_restarted_and_the_result_complete(
        tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the model actor's process while the job runs (a separate `simsearch index` process with its own
    local Ray): Ray restarts it and retries its batch; every image is indexed once."""
    make_photos(tmp_path / "p", 60)
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        run = process_sessions.start([sys.executable, "-m", "cli", "index", str(tmp_path / "p"), "--index",
                                      str(tmp_path / "idx"), "--model", str(tiny_model_file), "--batch-size", "2",
                                      "--ray", "local"], cwd=REPO, stdout=out, stderr=err,
                                     env=process_sessions.child_environment())
    killed, environment, deadline = None, b"", time.monotonic() + RUN_SECONDS
    try:
        while run.poll() is None:
            assert time.monotonic() < deadline, f"the run did not end within {RUN_SECONDS} s"
            actors = [pid for pid, command in process_sessions.session_processes(run.pid).items()
                      if "MapBatches(_DecodeAndEmbed)" in command]  # this run's actors, not another's on the machine
            if killed is None and actors and indexed_rows(tmp_path / "idx"):  # it has embedded a batch: kill it mid-job
                environment = Path(f"/proc/{actors[0]}/environ").read_bytes()
                os.kill(actors[0], signal.SIGKILL)
                killed = actors[0]
            time.sleep(0.05)
    finally:
        process_sessions.end(run)
    err = (tmp_path / "err").read_text()
    assert killed is not None, "the job ended before its actor could be killed"
    assert b"MALLOC_ARENA_MAX=1" in environment.split(b"\0"), "an actor embeds on a thread: one arena, or a fifth slower"
    assert run.returncode == 0, err
    assert "added 60" in err
    assert len(rows(tmp_path / "idx")) == 60 and len(vectors(tmp_path / "idx")) == 60


def assert_one_line_failure(run: subprocess.CompletedProcess[str], text: str) -> None:
    """Exit 2 and, beside the progress bar, one line: the error, naming `text`."""
    assert_one_line_output(run.returncode, run.stdout + run.stderr, text, beside=" embedding ")


@pytest.fixture
def cluster_without_simsearch(tmp_path: Path) -> Iterator[str]:
    """A Ray head whose workers run a Python with Ray, torch and numpy but not simsearch: a venv that borrows this
    one's packages through a path file (such a path's own `.pth` files, simsearch's editable install among them,
    are not read)."""
    venv = tmp_path / "venv-without-simsearch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = (venv / "lib").glob("python*/site-packages")
    (site_packages / "borrowed.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    python = venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import indexer"], cwd=tmp_path, capture_output=True).returncode != 0
    with ray_cluster(python=python, cwd=tmp_path) as address:
        yield address


def test_a_cluster_that_refuses_the_driver_names_the_token_settings(
        tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """A head with token authentication (Ray's default for `ray start` since 2.59), a driver without the token."""
    make_photos(tmp_path / "p", 2)
    with ray_cluster(cwd=tmp_path, auth="token") as address:
        run = simsearch("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--ray", address,
                        cwd=tmp_path, env={"RAY_AUTH_MODE": "disabled"}, timeout=RUN_SECONDS)
    assert_one_line_failure(run, f"could not join the Ray cluster at {address}")
    assert "RAY_AUTH_TOKEN" in run.stderr
    assert not (tmp_path / "idx").exists(), "nothing half-written"


def test_a_cluster_without_simsearch_on_its_workers_is_one_line(
        tmp_path: Path, tiny_model_file: Path, make_photos, cluster_without_simsearch: str) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 6)
    run = simsearch("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--ray",
                    cluster_without_simsearch, cwd=tmp_path, env={"RAY_AUTH_MODE": "disabled"},
                    timeout=RUN_SECONDS)
    assert_one_line_failure(run, "the Ray workers cannot import simsearch (No module named ")
    assert not (tmp_path / "idx").exists(), "nothing half-written"


HUGE_SIDE = 24_000
"""The huge image's side: 576 megapixels, 1.7 GB decoded."""
MEMORY_MARGIN = 2.3e9
"""How far above what the machine uses as a run starts its local Ray's memory monitor kills: the run of the photos
alone peaks 1.1 to 1.4 GB above, the run with the huge image 3.3 GB above (2 cores, monitor off)."""


def one_colour_png(path: Path, side: int, colour: tuple[int, int, int]) -> None:
    """A `side` x `side` PNG of one colour, compressed a row at a time: this process never holds its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, deflate, data = b"\0" + bytes(colour) * side, zlib.compressobj(1), bytearray()
    for _ in range(side):
        data += deflate.compress(row)
    data += deflate.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", bytes(data)) + chunk(b"IEND", b""))


def index_under_memory_limit(tmp_path: Path, model: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`simsearch index p` with `--ray local`, whose memory monitor kills beyond `MEMORY_MARGIN` above what the
    machine uses just before the run (measured then: whatever else runs here, this process included, may have
    grown or shrunk since the last run)."""
    total, available = (int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith(("MemTotal:", "MemAvailable:")))
    threshold = (total - available + MEMORY_MARGIN) / total
    try:
        return simsearch("index", "p", "--index", name, "--model", str(model), "--batch-size", "4",
                         "--max-pixels", str(HUGE_SIDE ** 2), "--ray", "local", cwd=tmp_path, timeout=RUN_SECONDS,
                         env={"RAY_memory_usage_threshold": f"{threshold:.4f}",
                              "RAY_memory_monitor_refresh_ms": "100", "RAY_task_oom_retry_delay_base_ms": "100"})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`simsearch index --ray local` under a memory limit of {threshold:.4f} did not end within "
                    f"{RUN_SECONDS} s. When memory the run cannot free (another process's) keeps the machine above "
                    "the limit, Ray's memory monitor kills Ray Data's ActorLocationTracker (unlimited restarts) "
                    "each time it restarts and the job never starts: was something else using memory here? "
                    f"Its output: {(exc.stderr or '')[-500:]}")


def test_a_worker_out_of_memory_is_one_line_and_leaves_whole_batches(
        tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """The worker decoding a 576-megapixel PNG (allowed by --max-pixels) grows by 1.7 GB, on a local Ray whose
    memory monitor kills beyond what this machine uses as the run starts plus 2.3 GB: it is killed, its batch
    retried and killed again. Under the same limit, the photos alone index: the image is what runs out of memory.

    The image is written without ever being held here: once any test has embedded in this process, its malloc
    keeps what it frees (`retrieval.models.allocator.keep_freed_memory`), so an image made here with Pillow would stay
    in it (1.6 GB), above the limit before the run begins; the memory monitor can then kill only Ray Data's own
    ActorLocationTracker, which restarts without limit, and the run never ends."""
    make_photos(tmp_path / "p", 8)
    control = index_under_memory_limit(tmp_path, tiny_model_file, "control")
    assert control.returncode == 0 and "added 8" in control.stderr, control.stderr
    one_colour_png(tmp_path / "p" / "zz-huge.png", HUGE_SIDE, (120, 30, 200))
    run = index_under_memory_limit(tmp_path, tiny_model_file, "idx")
    assert_one_line_failure(run, "a Ray worker ran out of memory")
    if (tmp_path / "idx").exists():  # whole batches imported before the failure, if any, and nothing else
        assert set(rows(tmp_path / "idx")) == set(vectors(tmp_path / "idx"))
        assert "zz-huge.png" not in rows(tmp_path / "idx")


def test_model_actors_follow_the_cluster() -> None:
    """One actor a GPU with a GPU's batch and the CPUs left to decoding; without GPUs, one actor a CPU that
    decodes its own batches."""
    from retrieval.sources.ray_embed import GPU_BATCH_SIZE, ActorPlan, plan_actors

    assert plan_actors({"CPU": 2.0}, 32) == ActorPlan(actors=2, gpus=0, cpus=1, threads=1, batch_size=32,
                                                      decodes=True)
    assert plan_actors({"CPU": 16.0}, 32).actors == 16
    assert plan_actors({"CPU": 128.0, "GPU": 8.0}, 32) == ActorPlan(actors=8, gpus=1, cpus=0, threads=1,
                                                                   batch_size=GPU_BATCH_SIZE, decodes=False)
    assert plan_actors({"CPU": 8.0, "GPU": 1.0}, 512).batch_size == 512, "a larger --batch-size is kept"
