"""The library's decode-and-embed call: files or bytes in, a vector or an error out, in order."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from retrieval.embed_sources import embed_sources
from retrieval.embedding import Embedder
from retrieval.model import EmbeddingModel


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
