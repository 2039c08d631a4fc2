"""The server's routes as routers with their state passed in: two apps in one process serve their own indexes;
uploads are embedded in one small batch, as the library embeds the same files, without touching torch's threads;
and a path given to index is "there" by the one rule (`something_at`), dangling links included."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

fastapi = pytest.importorskip("fastapi", reason="the server's extra is not installed: pip install -e '.[server]'")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import invoke, photo  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import load_model  # noqa: E402
from retrieval.sources.embed import embed_files  # noqa: E402
from server.app import create_app  # noqa: E402
from server.batching import embed_uploads  # noqa: E402

URL = "http://127.0.0.1"
API_CLIENT = {"X-Simsearch-Request": "1"}
VECTOR_TOLERANCE = 1e-5


def indexed(folder: Path, model: Path, make_photos, count: int) -> list[Path]:  # type: ignore[no-untyped-def]
    photos = make_photos(folder / "p", count)
    result = invoke("index", "p", "--index", "idx", "--model", str(model), "--workers", "0", cwd=folder)
    assert result.exit_code == 0, result.output
    return photos  # type: ignore[no-any-return]


def test_two_apps_in_one_process_each_serve_their_own_index(tmp_path: Path, tiny_model_file: Path,
                                                            make_photos) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    indexed(tmp_path / "a", tiny_model_file, make_photos, 3)
    only_in_b = indexed(tmp_path / "b", tiny_model_file, make_photos, 5)[4]
    with TestClient(create_app(tmp_path / "a" / "idx"), base_url=URL, headers=API_CLIENT) as first, \
            TestClient(create_app(tmp_path / "b" / "idx"), base_url=URL, headers=API_CLIENT) as second:
        assert first.get("/api/ready").json()["images"] == 3
        assert second.get("/api/ready").json()["images"] == 5
        assert second.post("/api/query", json={"path": str(only_in_b), "k": 1}).status_code == 200
        assert first.post("/api/query", json={"path": str(only_in_b), "k": 1}).status_code == 404


def test_uploads_are_embedded_in_one_call_as_the_library_embeds_their_files(
        tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path, 4)
    model = load_model(tiny_model_file)
    embedder = Embedder(model, torch.device("cpu"))
    threads = torch.get_num_threads()
    uploads = [path.read_bytes() for path in photos]
    results = embed_uploads(embedder, model.preprocessing, [uploads[0], b"not an image", *uploads[1:]], 10**8)
    assert torch.get_num_threads() == threads, "the server leaves torch's threads as the process has them"
    assert results[1].vector is None and results[1].error
    vectors = np.stack([result.vector for result in results if result.vector is not None])
    assert np.allclose(vectors, embed_files(embedder, photos), atol=VECTOR_TOLERANCE)


def test_a_query_upload_leaves_the_process_threads_alone(tmp_path: Path, tiny_model_file: Path,
                                                          make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = indexed(tmp_path, tiny_model_file, make_photos, 3)
    threads = torch.get_num_threads()
    with TestClient(create_app(tmp_path / "idx"), base_url=URL, headers=API_CLIENT) as api:
        answer = api.post("/api/query", files={"image": ("q.png", photos[0].read_bytes())}, data={"k": "1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["neighbours"][0]["path"] == str(photos[0])
    assert torch.get_num_threads() == threads


def test_a_dangling_link_given_to_index_is_there_and_a_missing_path_is_not(
        tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    indexed(tmp_path, tiny_model_file, make_photos, 2)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    extra = tmp_path / "extra.png"
    buffer = io.BytesIO()
    photo(99).save(buffer, "PNG")
    extra.write_bytes(buffer.getvalue())
    with TestClient(create_app(tmp_path / "idx"), base_url=URL, headers=API_CLIENT) as api:
        missing = api.post("/api/images", json={"paths": [str(tmp_path / "missing.png")]})
        assert missing.status_code == 404 and "missing.png" in missing.json()["detail"]
        added = api.post("/api/images", json={"paths": [str(extra), str(dangling)]})
        assert added.status_code == 200, added.text
        assert added.json()["added"] == 1 and added.json()["failed"] == 1, "the scan reports the dangling link"
