"""The Ray Data form of dedup over shards (`retrieval.decisions.ray_dedup`): on a local Ray of 2 CPUs, the same manifest
rows as the one-machine run (`retrieval.decisions.shard_dedup`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from ray_cluster import ray_left_as_found  # noqa: E402
from test_shards import planted, write_parquet, write_tar  # noqa: E402
from retrieval.collection import Collection  # noqa: E402
from retrieval.decisions.ray_dedup import dedup_shards_on_ray  # noqa: E402
from retrieval.decisions.shard_dedup import dedup_shards  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import DEFAULT_MODEL_FILE, load_default_model  # noqa: E402
from retrieval.sources.shard_samples import SampleChunks  # noqa: E402


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A local Ray of 2 CPUs of its own for the test, stopped after it, and this process's environment restored.
    Its memory monitor is off: on a machine shared with other jobs, their memory would get this test's workers
    killed, which is not what it tests."""
    with ray_left_as_found():
        os.environ["RAY_memory_monitor_refresh_ms"] = "0"
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        yield


def test_the_ray_form_gives_the_one_machine_manifest(tmp_path: Path, local_ray: None) -> None:
    samples = planted()
    shards = [write_tar(tmp_path / "a.tar", samples[:5]), tmp_path / "absent.tar",
              write_parquet(tmp_path / "b.parquet", [("p0", samples[6][1]), *samples[5:]])]
    model = load_default_model()
    threshold = Collection(None, model).threshold()
    local = dedup_shards(SampleChunks(shards), Embedder(model), threshold).rows
    on_ray = dedup_shards_on_ray(shards, DEFAULT_MODEL_FILE, threshold)
    assert on_ray == local
    rows = {row.key: row for row in on_ray}
    assert rows["p0@b.parquet"].duplicate_of == "p0" and rows["p0@b.parquet"].copy
    assert rows["edit1"].duplicate_of == "p1" and rows["broken"].status == "failed"
    assert on_ray[-1].status == "skipped" and on_ray[-1].shard == str(tmp_path / "absent.tar")
