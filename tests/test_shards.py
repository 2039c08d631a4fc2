"""`simsearch dedup SHARDS --manifest OUT`, the kept-samples folder and `Deduplicator`: shards in, one manifest row
a sample out, decided as `simsearch dedup` decides files (the shipped model, the demo photos)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, invoke
from retrieval import Deduplicator
from retrieval.decisions.manifest import read_manifest
from retrieval.decisions.sample_groups import SampleDecision
from retrieval.decisions.sample_store import FILE_NAME

PHOTOS = sorted((REPO / "demo" / "photos").iterdir())


def edited(data: bytes) -> bytes:
    """A half-size JPEG (quality 60) of an image: an edited copy."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    image.resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def planted() -> list[tuple[str, bytes]]:
    """Six distinct photos (keys p0-p5), an exact copy of p0, an edited copy of p1 and an undecodable sample."""
    photos = [(f"p{i}", path.read_bytes()) for i, path in enumerate(PHOTOS[:6])]
    return [*photos, ("copy0", photos[0][1]), ("edit1", edited(photos[1][1])), ("broken", b"not an image")]


def write_tar(path: Path, samples: list[tuple[str, bytes]], extension: str = "jpg") -> Path:
    with tarfile.open(path, "w") as archive:
        for key, data in samples:
            for suffix, payload in ((extension, data), ("txt", f"caption of {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return path


def write_parquet(path: Path, samples: list[tuple[str, bytes]], key: str = "key", image: str = "jpg") -> Path:
    table = pa.table({key: [k for k, _ in samples], image: [data for _, data in samples],
                      "caption": [f"caption of {k}" for k, _ in samples]})
    pq.write_table(table, path, row_group_size=4)
    return path


def by_key(manifest: Path) -> dict[str | None, dict[str, object]]:
    return {row["key"]: row for row in read_manifest(manifest)}


def assert_planted(rows: dict[str | None, dict[str, object]]) -> None:
    """The planted set's decisions: copy0 an exact copy of p0, edit1 a near-duplicate of p1, the rest kept."""
    assert rows["copy0"]["keep"] is False and rows["copy0"]["copy"] is True
    assert rows["copy0"]["duplicate_of"] == "p0" and rows["copy0"]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert rows["edit1"]["keep"] is False and rows["edit1"]["copy"] is False
    assert rows["edit1"]["duplicate_of"] == "p1" and 0 < rows["edit1"]["distance"] < 0.667
    assert rows["p0"]["keep"] is True and rows["p0"]["group"] == rows["copy0"]["group"]
    assert rows["p1"]["keep"] is True and rows["p1"]["group"] == rows["edit1"]["group"]
    for key in ("p2", "p3", "p4", "p5"):
        assert rows[key]["keep"] is True and rows[key]["group"] is None and rows[key]["status"] == "ok"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["keep"] is None and rows["broken"]["error"]


def test_tar_shards_give_a_manifest_row_per_sample(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "000000.tar", planted())
    result = invoke("dedup", str(shard), "--manifest", "out.parquet", cwd=tmp_path)
    assert result.exit_code == 1, result.output  # done, one sample failed
    assert "warning: broken in" in result.output and "Traceback" not in result.output
    rows = by_key(tmp_path / "out.parquet")
    assert len(rows) == 9 and {row["shard"] for row in rows.values()} == {str(shard)}
    assert_planted(rows)


def test_parquet_shards_in_img2datasets_layout_and_other_columns(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", planted())
    assert invoke("dedup", "a.parquet", "--manifest", "out.jsonl", cwd=tmp_path).exit_code == 1
    write_parquet(tmp_path / "b.parquet", planted(), key="id", image="image")
    assert invoke("dedup", "b.parquet", "--manifest", "b.parquet.out.parquet", "--key-column", "id",
                  "--image-column", "image", cwd=tmp_path).exit_code == 1
    assert_planted(by_key(tmp_path / "b.parquet.out.parquet"))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 9 and '"duplicate_of": "p0"' in next(line for line in lines if '"copy0"' in line)
    missing = invoke("dedup", "b.parquet", "--manifest", "c.parquet", cwd=tmp_path)
    assert_one_line_error(missing, "no column 'key'")


def test_shards_across_files_and_repeated_keys(tmp_path: Path) -> None:
    samples = planted()
    write_tar(tmp_path / "a.tar", samples[:4])
    write_parquet(tmp_path / "b.parquet", [("p0", samples[6][1]), *samples[4:6], samples[7]])
    result = invoke("dedup", "a.tar", "b.parquet", "--manifest", "out.csv", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "1 key met more than once" in result.output
    text = (tmp_path / "out.csv").read_text()
    assert "p0@b.parquet,b.parquet," in text and ",False,p0,0.0,True,ok," in text


def test_a_crafted_tar_writes_nothing_and_reads_nothing_outside_it(tmp_path: Path) -> None:
    photo = PHOTOS[0].read_bytes()
    shard = tmp_path / "crafted.tar"
    with tarfile.open(shard, "w") as archive:
        for name in ("../../escape.jpg", "/abs/olute.jpg", "a/../../b.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(photo)
            archive.addfile(info, io.BytesIO(photo))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, str(PHOTOS[1])
        archive.addfile(link)
        hard = tarfile.TarInfo("hard.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../../escape.jpg"
        archive.addfile(hard)
        device = tarfile.TarInfo("dev.jpg")
        device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
        archive.addfile(device)
        huge = tarfile.TarInfo("huge.jpg")
        huge.size = 400 << 20  # the header claims 400 MB; the shard ends a few blocks after it
        archive.fileobj.write(huge.tobuf(format=tarfile.GNU_FORMAT))
        archive.offset += tarfile.BLOCKSIZE
    before = sorted(path.name for path in tmp_path.parent.iterdir())
    result = invoke("dedup", str(shard), "--manifest", "out.parquet", cwd=tmp_path)
    assert result.exit_code == 1, result.output
    assert sorted(path.name for path in tmp_path.parent.iterdir()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["crafted.tar", "out.parquet"]
    rows = by_key(tmp_path / "out.parquet")
    assert rows["../../escape"]["keep"] is True and rows["/abs/olute"]["keep"] is False
    for key in ("link", "hard", "dev"):
        assert rows[key]["status"] == "failed" and rows[key]["error"] == "no image member"
    assert "over the limit" in rows["huge"]["error"]


def test_a_truncated_shard_is_a_recorded_skip_and_a_non_shard_an_error(tmp_path: Path) -> None:
    whole = write_tar(tmp_path / "whole.tar", planted()[:6]).read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:len(whole) // 2])
    result = invoke("dedup", "cut.tar", "--manifest", "out.parquet", cwd=tmp_path)
    assert result.exit_code == 1, result.output
    rows = read_manifest(tmp_path / "out.parquet")
    assert rows[-1]["status"] == "skipped" and rows[-1]["key"] is None and "truncated" in rows[-1]["error"]
    assert [row["key"] for row in rows[:-1]] == ["p0", "p1", "p2"][:len(rows) - 1] and len(rows) > 1
    (tmp_path / "text.tar").write_bytes(b"this is not a tar file" * 100)
    assert_one_line_error(invoke("dedup", "text.tar", "--manifest", "x.parquet", cwd=tmp_path),
                          "no sample could be read")
    assert_one_line_error(invoke("dedup", "whole.tar", "--manifest", "x.txt", cwd=tmp_path), "a manifest is a")
    assert_one_line_error(invoke("dedup", "whole.tar", cwd=tmp_path), "--manifest OUT go together")


def test_index_keeps_samples_for_later_runs_and_against_adds_none(tmp_path: Path) -> None:
    samples = planted()
    write_tar(tmp_path / "first.tar", samples[:3])
    write_tar(tmp_path / "second.tar", [samples[6], samples[7], samples[3]])  # copy of p0, edit of p1, new p3
    assert invoke("dedup", "first.tar", "--manifest", "1.parquet", "--index", "kept", cwd=tmp_path).exit_code == 0
    stored = (tmp_path / "kept" / FILE_NAME).read_bytes()
    result = invoke("dedup", "second.tar", "--manifest", "2.parquet", "--against", "kept", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kept" / FILE_NAME).read_bytes() == stored
    rows = by_key(tmp_path / "2.parquet")
    assert rows["copy0"]["duplicate_of"] == "p0" and rows["copy0"]["copy"] is True
    assert rows["edit1"]["duplicate_of"] == "p1" and rows["p3"]["keep"] is True
    assert invoke("dedup", "second.tar", "--manifest", "3.parquet", "--index", "kept", cwd=tmp_path).exit_code == 0
    write_tar(tmp_path / "third.tar", [("again3", samples[3][1])])
    invoke("dedup", "third.tar", "--manifest", "4.parquet", "--index", "kept", cwd=tmp_path)
    assert by_key(tmp_path / "4.parquet")["again3"]["duplicate_of"] == "p3"
    assert_one_line_error(invoke("dedup", "third.tar", "--manifest", "5.parquet", "--against", "none",
                                 cwd=tmp_path), "no samples kept there")


def test_flat_images_are_judged_on_their_pixels(tmp_path: Path) -> None:
    def solid(colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (96, 96), colour).save(buffer, "PNG")
        return buffer.getvalue()

    write_tar(tmp_path / "flat.tar", [("red", solid((200, 30, 30))), ("red2", solid((201, 30, 30))),
                                      ("pink", solid((200, 90, 120)))], "png")
    assert invoke("dedup", "flat.tar", "--manifest", "out.parquet", cwd=tmp_path).exit_code == 0
    rows = by_key(tmp_path / "out.parquet")
    assert rows["red2"]["duplicate_of"] == "red" and rows["pink"]["keep"] is True and rows["pink"]["group"] is None


@pytest.fixture(scope="module")
def deduplicator_inputs() -> tuple[list[str], list[bytes | np.ndarray]]:
    samples = planted()
    images: list[bytes | np.ndarray] = [data for _, data in samples]
    images[2] = np.asarray(Image.open(io.BytesIO(images[2])).convert("RGB"))  # a decoded array among bytes
    return [key for key, _ in samples], images


def test_the_deduplicator_over_two_batches_equals_one_batch(
        deduplicator_inputs: tuple[list[str], list[bytes | np.ndarray]]) -> None:
    keys, images = deduplicator_inputs
    whole = Deduplicator().add(keys, images)
    step = Deduplicator()
    split = step.add(keys[:4], images[:4]) + step.add(keys[4:], images[4:])
    def decided(row: SampleDecision) -> tuple[object, ...]:  # `group` numbers the groups of one call
        return row.key, row.keep, row.duplicate_of, row.distance, row.copy, row.status, row.error

    assert [decided(row) for row in split] == [decided(row) for row in whole]
    by = {row.key: row for row in whole}
    assert by["copy0"].duplicate_of == "p0" and by["edit1"].duplicate_of == "p1" and by["broken"].keep is None
    assert len(step.seen) == 6
    with pytest.raises(ValueError, match="given twice"):
        step.add(["p0"], [images[0]])
