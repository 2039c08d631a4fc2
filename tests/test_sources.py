"""The library's decode-and-embed call: files or bytes in, a vector or an error out, in order."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel
from retrieval.sources.decode import Source
from retrieval.sources.embed import embed_batches, embed_sources


def test_files_and_bytes_get_the_same_vector_and_bad_inputs_their_error(tmp_path: Path, tiny: EmbeddingModel,
                                                                       make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 5)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    sources: list[Path | bytes] = [photos[0], photos[0].read_bytes(), tmp_path / "p", tmp_path / "broken.png",
                                   tmp_path / "missing.png", *photos[1:]]
    embedded = embed_sources(Embedder(tiny), sources, batch_size=2)
    assert len(embedded) == len(sources)
    assert np.allclose(embedded[0].vector, embedded[1].vector, atol=1e-6), "bytes decode as the file does"
    assert [e.error for e in embedded[2:5]] == ["is a directory", "not a recognised image format", "no such file"]
    assert all(e.vector is None for e in embedded[2:5])
    alone = embed_sources(Embedder(tiny), [photos[3]])[0].vector
    assert np.allclose(embedded[7].vector, alone, atol=1e-6), "batching across failures keeps each input's order"
    vectors = np.stack([e.vector for e in embedded if e.vector is not None])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_an_image_over_the_pixel_limit_is_refused(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    [photo] = make_photos(tmp_path / "p", 1)
    buffer = io.BytesIO(photo.read_bytes())
    [refused] = embed_sources(Embedder(tiny), [buffer.getvalue()], max_pixels=100)
    assert refused.vector is None and "exceeds the limit" in (refused.error or "")


def test_worker_processes_give_what_the_caller_decodes_itself(tmp_path: Path, tiny: EmbeddingModel,  # type: ignore[no-untyped-def]
                                                             make_photos) -> None:
    """Inputs and results are plain data that cross a process boundary: decoding in two worker processes gives
    each key its own result, errors included, as decoding in this process does."""
    photos = make_photos(tmp_path / "p", 5)
    (tmp_path / "empty.png").write_bytes(b"")
    sources = [Source(i, path=str(p)) for i, p in enumerate([*photos, tmp_path / "empty.png"])]
    sources.append(Source(len(sources), data=photos[2].read_bytes()))
    here = [r for batch in embed_batches(Embedder(tiny), sources, batch_size=3, workers=0) for r in batch]
    there = [r for batch in embed_batches(Embedder(tiny), pickle.loads(pickle.dumps(sources)), batch_size=3,
                                          workers=2) for r in batch]
    assert [r.key for r in there] == [s.key for s in sources]
    assert [(r.content_hash, r.width, r.error) for r in there] == [(r.content_hash, r.width, r.error) for r in here]
    assert there[5].error == "empty file" and there[5].vector is None
    assert there[6].content_hash == there[2].content_hash, "bytes hash as the file they came from"
    for a, b in zip(here, there, strict=True):
        assert (a.vector is None) == (b.vector is None)
        if a.vector is not None:
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


def test_a_source_is_a_path_or_bytes() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Source(0)
    with pytest.raises(ValueError, match="exactly one"):
        Source(0, path="a.png", data=b"x")
