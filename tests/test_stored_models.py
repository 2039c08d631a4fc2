"""An index is whole in its database: the model files are stored with the rows, checked by their hashes on load,
and `models/` in the index directory is a cache of them. On SQLite and on PostgreSQL alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from conftest import assert_one_line_error, invoke, save_tiny_model
from retrieval.errors import CorruptIndexError
from retrieval.index import open_index
from retrieval.sources.content_hash import hash_bytes
from retrieval.store.schema import ModelFileRecord
from server.app import create_app


def indexed(tmp_path: Path, make_photos, tiny_model_file: Path, db_url: str) -> list[Path]:  # type: ignore[no-untyped-def]
    """Six photos (two of them copies of one) indexed into `db_url` from the index directory `first`."""
    photos = make_photos(tmp_path / "p", 5)
    (tmp_path / "p" / "copy.png").write_bytes(photos[0].read_bytes())
    result = invoke("index", "p", "--index", "first", "--db", db_url, "--model", str(tiny_model_file),
                    "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return photos


def test_a_machine_with_only_the_url_queries_dedups_and_serves(tmp_path: Path, make_photos,  # type: ignore[no-untyped-def]
                                                               tiny_model_file: Path, db_url: str) -> None:
    photos = indexed(tmp_path, make_photos, tiny_model_file, db_url)
    (tmp_path / "second").mkdir()  # another machine: an empty index directory, the database's URL
    other = ["--index", "second", "--db", db_url]
    queried = invoke("query", str(photos[2]), "-k", "1", "--json", *other, cwd=tmp_path)
    assert queried.exit_code == 0, queried.output
    assert json.loads(queried.stdout)[0]["neighbours"][0]["path"] == str(photos[2])
    [cached] = (tmp_path / "second" / "models").glob("*.safetensors")
    [original] = (tmp_path / "first" / "models").glob("*.safetensors")
    assert cached.read_bytes() == original.read_bytes(), "the cache holds the database's file"

    cached.write_bytes(b"damaged")
    uncalibrated = invoke("dedup", *other, cwd=tmp_path)  # the threshold is looked up by the model file's hash
    assert_one_line_error(uncalibrated, "no calibration for model tiny-0")
    assert cached.read_bytes() == original.read_bytes(), "a damaged cached file is read again from the database"
    cached.unlink()
    found = invoke("dedup", "--threshold", "0.001", "--json", *other, cwd=tmp_path)
    assert found.exit_code == 0, found.output
    assert [sorted(Path(member["path"]).name for member in (group["keeper"], *group["duplicates"]))
            for group in json.loads(found.stdout)] == [["copy.png", photos[0].name]]

    cached.unlink(missing_ok=True)
    with TestClient(create_app(tmp_path / "second", db_url), base_url="http://127.0.0.1",
                    headers={"X-Simsearch-Request": "1"}) as api:
        answer = api.post("/api/query", files={"image": ("q.png", photos[3].read_bytes())}, data={"k": "1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["neighbours"][0]["path"] == str(photos[3])


def test_a_tampered_model_file_in_the_database_is_refused(tmp_path: Path, make_photos,  # type: ignore[no-untyped-def]
                                                          tiny_model_file: Path, db_url: str) -> None:
    photos = indexed(tmp_path, make_photos, tiny_model_file, db_url)
    index = open_index(tmp_path / "first", db_url)
    [cached] = (tmp_path / "first" / "models").glob("*.safetensors")
    good = cached.read_bytes()
    cached.unlink()
    with index.engine.begin() as connection:
        connection.execute(update(ModelFileRecord).values(data=good[:-1] + bytes([good[-1] ^ 1])))
    with pytest.raises(CorruptIndexError, match="do not match their SHA-256"):
        index.load_model()
    queried = invoke("query", str(photos[0]), "--index", "first", "--db", db_url, cwd=tmp_path)
    assert_one_line_error(queried, "model")
    with TestClient(create_app(tmp_path / "first", db_url), base_url="http://127.0.0.1",
                    headers={"X-Simsearch-Request": "1"}) as api:
        refused = api.post("/api/query", files={"image": ("q.png", photos[0].read_bytes())})
    assert refused.status_code == 503 and "SHA-256" in refused.json()["detail"]
    assert not cached.exists(), "bytes that fail their check are never cached"

    other = save_tiny_model(tmp_path / "other.safetensors", seed=7)  # another model's file, with its own SHA-256
    with index.engine.begin() as connection:
        connection.execute(update(ModelFileRecord).values(data=other.read_bytes(),
                                                          sha256=hash_bytes(other.read_bytes())))
    with pytest.raises(CorruptIndexError, match="another model"):
        index.load_model()


def test_an_index_made_before_the_database_held_model_files_stores_its_own(
        tmp_path: Path, make_photos, tiny_model_file: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    photos = indexed(tmp_path, make_photos, tiny_model_file, db_url)
    index = open_index(tmp_path / "first", db_url)
    with index.engine.begin() as connection:
        connection.execute(delete(ModelFileRecord))
    assert invoke("query", str(photos[0]), "--index", "first", "--db", db_url, cwd=tmp_path).exit_code == 0
    served = index.served_model()
    assert served is not None and index.store.holds_model_file(served.content_hash)
