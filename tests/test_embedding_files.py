"""Embeddings out of an index and into another, with no image decoded; files that cannot be taken are refused whole."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, assert_one_line_error, invoke, save_tiny_model, tiny_spec
from retrieval.models.model import build_model


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


def test_a_bad_vector_late_in_the_last_file_refuses_the_import_whole(tmp_path: Path, tiny_model_file: Path,  # type: ignore[no-untyped-def]
                                                                     exported: list[Path], make_photos,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are read a row group and a batch at a time, and all of them are checked before the first is written."""
    # two rows of 16 dimensions a group
    monkeypatch.setattr("retrieval.sources.embedding_files.GROUP_BYTES", 2 * 16 * 4)
    monkeypatch.setattr("retrieval.sources.embedding_files.WRITE_ROWS", 2)
    assert invoke("export", "all.parquet", "--index", "a", cwd=tmp_path).exit_code == 0
    assert pq.ParquetFile(tmp_path / "all.parquet").num_row_groups == 5, "9 rows, 2 a group"
    receiving_index(tmp_path, tiny_model_file, make_photos)
    good = pq.read_table(tmp_path / "all.parquet")
    for name, start in (("first.parquet", 0), ("second.parquet", 3)):
        pq.write_table(good.slice(start, 3), tmp_path / name, row_group_size=2)
    vectors = np.stack(good.column("vector").to_numpy(zero_copy_only=False))[6:].astype(np.float32)
    vectors[2] *= 3
    last = good.slice(6).drop_columns(["vector"]).append_column(
        "vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16))
    pq.write_table(last.replace_schema_metadata(good.schema.metadata), tmp_path / "last.parquet", row_group_size=2)
    refused = invoke("import", "first.parquet", "second.parquet", "last.parquet", "--index", "b", cwd=tmp_path)
    assert_one_line_error(refused, "last.parquet: row 3: a vector that is not finite and of unit length")
    info = json.loads(invoke("info", "--json", "--index", "b", cwd=tmp_path).stdout)
    assert info["images"] == 1, "nothing of the good files before it is written"
    imported = invoke("import", "first.parquet", "second.parquet", "--index", "b", cwd=tmp_path)
    assert imported.exit_code == 0 and "imported 6 images" in imported.output, imported.output


MEASURE_IMPORT = """
import re, sys
from pathlib import Path
from retrieval.sources.embedding_files import import_embeddings
from retrieval.index import open_index

def status(field):
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\\s+(\\d+) kB", status.read()).group(1)) * 1024

index = open_index(Path(sys.argv[1]))
import_embeddings(index, [Path(sys.argv[2])])
resident = status("VmRSS")
rows = import_embeddings(index, [Path(path) for path in sys.argv[3:]])
print(rows, status("VmHWM") - resident)
"""
"""Import a small file (what reading takes whatever the size: Arrow's reader, the allocators' caches, one batch),
then the files: the rows imported, and how far the peak resident memory rose above what was resident between.
The peak is this process's own (`VmHWM`): `ru_maxrss` keeps the forking parent's across exec."""


def test_an_import_holds_about_one_batch_not_the_files(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """100,000 vectors of 768 dimensions (293 MiB as float32) in two files: the import's peak resident memory
    grows by less than the vectors take, over that of a first import of 10,000. It grows by what one batch and the
    reader's and allocators' caches take, 57 to 100 MiB measured; read whole, the files took about 4 times the
    vectors' room."""
    from retrieval.index import open_index
    from retrieval.sources.embedding_files import Embeddings, write_parquet

    model_file = tmp_path / "wide.safetensors"
    build_model(dataclasses.replace(tiny_spec("wide"), embedding_dim=768)).save(model_file)
    make_photos(tmp_path / "seed", 1)
    assert invoke("index", "seed", "--index", "idx", "--model", str(model_file), "--workers", "0",
                  cwd=tmp_path).exit_code == 0
    model = open_index(tmp_path / "idx").served_model()
    assert model is not None and model.embedding_dim == 768
    rng, files = np.random.default_rng(0), []
    for number, count in enumerate((10_000, 50_000, 50_000)):
        vectors = rng.standard_normal((count, 768), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [{"path": f"/bounded/{number}/{row}.jpg", "image_id": None, "label": None, "width": 1, "height": 1,
                 "size": row, "mtime_ns": row, "content_hash": f"{number:032x}{row:032x}"} for row in range(count)]
        files.append(tmp_path / f"{number}.parquet")
        write_parquet(files[-1], Embeddings(model.content_hash, model.name, rows, vectors))
    measured = subprocess.run([sys.executable, "-c", MEASURE_IMPORT, str(tmp_path / "idx"), *map(str, files)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert measured.returncode == 0, measured.stderr
    rows, grown = map(int, measured.stdout.split())
    assert rows == 100_000
    assert grown < rows * 768 * 4, f"peak resident memory grew by {grown / 2**20:.0f} MiB"


def test_a_file_changed_between_the_check_and_the_writes_is_reported(tmp_path: Path, tiny_model_file: Path,  # type: ignore[no-untyped-def]
                                                                     exported: list[Path], make_photos,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are read twice; a file rewritten meanwhile (a job still writing it) is refused where it is bad,
    saying how many rows of the files before it were written."""
    from retrieval.sources.embedding_files import EmbeddingsReader

    assert invoke("export", "all.parquet", "--index", "a", cwd=tmp_path).exit_code == 0
    receiving_index(tmp_path, tiny_model_file, make_photos)
    good = pq.read_table(tmp_path / "all.parquet")
    pq.write_table(good.slice(0, 4), tmp_path / "first.parquet")
    pq.write_table(good.slice(4), tmp_path / "second.parquet")
    checked = EmbeddingsReader.check

    def check_then_rewrite(reader: EmbeddingsReader):  # type: ignore[no-untyped-def]
        tag = checked(reader)
        pq.write_table(good.slice(4).replace_schema_metadata({}), tmp_path / "second.parquet")
        return tag

    monkeypatch.setattr(EmbeddingsReader, "check", check_then_rewrite)
    result = invoke("import", "first.parquet", "second.parquet", "--index", "b", cwd=tmp_path)
    assert_one_line_error(result, "second.parquet: no simsearch model tag")
    assert "the files changed after they were checked: 4 of their rows were imported" in result.output
