"""Embeddings out of an index and into another, with no image decoded; files that cannot be taken are refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, invoke, save_tiny_model


def answers(tmp_path: Path, index: str, photos: list[Path]) -> list[list[tuple[str, float]]]:
    """The 4 nearest of each photo among the exported folder's (the receiving index's own first image aside)."""
    result = invoke("query", *map(str, photos), "-k", "5", "--json", "--index", index, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return [[(n["path"], n["distance"]) for n in r["neighbours"] if "/seed/" not in n["path"]][:4]
            for r in json.loads(result.stdout)]


@pytest.fixture
def exported(tmp_path: Path, tiny_model_file: Path, make_photos) -> list[Path]:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 9)
    result = invoke("index", "p", "--index", "a", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return photos


def receiving_index(tmp_path: Path, model: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """An index `b` that serves `model`: one other image indexed with it."""
    make_photos(tmp_path / "seed", 1, start=100)
    assert invoke("index", "seed", "--index", "b", "--model", str(model), "--workers", "0",
                  cwd=tmp_path).exit_code == 0


@pytest.mark.parametrize("layout, out", [("parquet", "all.parquet"), ("npy", "shards")])
def test_an_export_imported_elsewhere_answers_the_same(tmp_path: Path, tiny_model_file: Path, exported: list[Path],  # type: ignore[no-untyped-def]
                                                       make_photos, layout: str, out: str) -> None:
    result = invoke("export", out, "--format", layout, "--index", "a", cwd=tmp_path)
    assert result.exit_code == 0 and "exported 9 images" in result.output, result.output
    if layout == "npy":
        assert (tmp_path / out / "embeddings" / "img_emb_0000.npy").is_file()
        assert (tmp_path / out / "metadata" / "metadata_0000.parquet").is_file()
    receiving_index(tmp_path, tiny_model_file, make_photos)
    imported = invoke("import", out, "--index", "b", cwd=tmp_path)
    assert imported.exit_code == 0 and "imported 9 images" in imported.output, imported.output
    assert answers(tmp_path, "b", exported) == answers(tmp_path, "a", exported)
    again = invoke("index", "p", "--index", "b", "--workers", "0", cwd=tmp_path)
    assert "added 0" in again.output and "skipped 9 unchanged" in again.output, "nothing decoded: the rows match"


def test_embeddings_of_another_model_are_refused_and_the_index_kept(tmp_path: Path, exported: list[Path],  # type: ignore[no-untyped-def]
                                                                    make_photos) -> None:
    assert invoke("export", "all.parquet", "--index", "a", cwd=tmp_path).exit_code == 0
    other = save_tiny_model(tmp_path / "other.safetensors", seed=1)
    receiving_index(tmp_path, other, make_photos)
    before = answers(tmp_path, "b", exported[:2])
    assert_one_line_error(invoke("import", "all.parquet", "--index", "b", cwd=tmp_path), "import embeddings made by the index's own model")
    assert answers(tmp_path, "b", exported[:2]) == before
    empty = invoke("import", "all.parquet", "--index", "fresh", cwd=tmp_path)
    assert_one_line_error(empty, "no simsearch index")


def test_files_that_lie_are_refused_whole(tmp_path: Path, tiny_model_file: Path, exported: list[Path],  # type: ignore[no-untyped-def]
                                          make_photos) -> None:
    assert invoke("export", "all.parquet", "--index", "a", cwd=tmp_path).exit_code == 0
    receiving_index(tmp_path, tiny_model_file, make_photos)
    good = pq.read_table(tmp_path / "all.parquet")
    data = (tmp_path / "all.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("import", "truncated.parquet", "--index", "b", cwd=tmp_path),
                          "not a readable embeddings file")
    vectors = np.stack(good.column("vector").to_numpy(zero_copy_only=False))
    tag = good.schema.metadata
    for name, column in (("short.parquet", vectors[:, :8]), ("long.parquet", 3 * vectors)):
        flat = pa.FixedSizeListArray.from_arrays(pa.array(column.astype(np.float32).reshape(-1)), column.shape[1])
        table = good.drop_columns(["vector"]).append_column("vector", flat).replace_schema_metadata(tag)
        pq.write_table(table, tmp_path / name)
    assert_one_line_error(invoke("import", "short.parquet", "--index", "b", cwd=tmp_path), "the tag says 16")
    assert_one_line_error(invoke("import", "long.parquet", "--index", "b", cwd=tmp_path), "unit length")
    pq.write_table(good.replace_schema_metadata({}), tmp_path / "untagged.parquet")
    assert_one_line_error(invoke("import", "untagged.parquet", "--index", "b", cwd=tmp_path), "no simsearch model tag")
    assert_one_line_error(invoke("import", "all.parquet", "short.parquet", "--index", "b", cwd=tmp_path),
                          "the tag says 16")
    info = json.loads(invoke("info", "--json", "--index", "b", cwd=tmp_path).stdout)
    assert info["images"] == 1, "a refused import writes nothing, however many files were good"
