"""The FAISS index over stored vectors, and its file.

Vectors are L2-normalised, so an inner-product index gives cosine neighbours; their scores are reported as the
squared L2 distance of `retrieval.vectors.unit_distance`. Its kind is a FAISS factory description
(`retrieval.vectors.faiss_factory`): exact `Flat`, or an inverted file trained on a random sample of the vectors.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from retrieval.atomic import atomic_write
from retrieval.errors import IndexUnavailableError, InvalidArgumentError
from retrieval.vectors.faiss_factory import EXACT, faiss_reason, new_faiss_index, set_search_breadth, training_size
from retrieval.vectors.unit_distance import squared_l2_from_scores

ADD_BLOCK = 65_536


def gpus() -> int:
    """GPUs a GPU build of faiss (`faiss-gpu`) sees; 0 for the CPU build."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _cluster_on_gpus(index: faiss.Index, dim: int) -> None:
    """With a GPU build of faiss, an inverted file's k-means runs on the GPUs (FAISS's own way: a GPU flat index
    as its clustering index); the index trained, and saved, is the CPU one either way."""
    if gpus() == 0:
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))


class VectorIndex:
    """Nearest neighbours by inner product, keyed by the `vectors.id` of the database."""

    def __init__(self, index: faiss.Index, nprobe: int | None = None) -> None:
        self._index = index
        self._on_gpus: faiss.Index | None = None
        self.nprobe = nprobe
        set_search_breadth(index, nprobe)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, description: str = EXACT,
              seed: int = 0) -> VectorIndex:
        """An index of `description` over these vectors; an inverted file is trained first on a random sample
        (seeded: never the first files in directory order)."""
        index = new_faiss_index(dim, description, ids=True)
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if not index.is_trained:
            sample = np.random.default_rng(seed).permutation(len(data))[:training_size(len(data), description)]
            _cluster_on_gpus(index, dim)
            try:
                index.train(data[np.sort(sample)])
            except RuntimeError as exc:  # too few vectors for its lists or codes, say
                raise InvalidArgumentError(f"cannot build a {description} index over {len(data):,} vectors: "
                                           f"{faiss_reason(exc)}") from exc
        built = cls(index)
        built.add(np.asarray(ids, dtype=np.int64), data)
        return built

    @classmethod
    def load(cls, path: Path, nprobe: int | None = None, mapped: bool = True) -> VectorIndex:
        """The index in `path`; `mapped` maps its vectors from the file rather than reading them (a cold query
        then costs about the same on a million vectors as on a thousand), for an index only searched."""
        # FAISS maps a flat index's codes with one flag and an inverted file's lists with another, and refuses
        # either flag on the other kind: the first that reads wins, and a file neither maps is read whole.
        attempts = [faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
                    0] if mapped else [0]
        for flags in attempts:
            try:
                return cls(faiss.read_index(str(path), flags), nprobe)
            except RuntimeError as exc:
                error = exc
        raise IndexUnavailableError(f"cannot read vector file {path}: {str(error).splitlines()[0]}") from error

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def lists(self) -> int | None:
        """The inverted lists of an inverted-file index; None for any other kind."""
        try:
            return int(faiss.extract_index_ivf(self._index).nlist)
        except RuntimeError:
            return None

    def ids(self) -> np.ndarray:
        """The database ids of the vectors it holds, sorted."""
        try:
            ivf = faiss.extract_index_ivf(self._index)
        except RuntimeError:
            return np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.empty(0, np.int64)

    def _searcher(self) -> faiss.Index:
        """The index searches run on: with a GPU build of faiss, a copy on the GPUs (made at the first search after
        a change); else the CPU index itself, which is also the one saved."""
        if gpus() == 0:
            return self._index
        if self._on_gpus is None:
            try:
                self._on_gpus = faiss.index_cpu_to_all_gpus(self._index)
            except RuntimeError:  # a kind faiss cannot move to a GPU: it is searched on the CPU
                self._on_gpus = self._index
            if self.nprobe is not None and self._on_gpus is not self._index:
                faiss.GpuParameterSpace().set_index_parameter(self._on_gpus, "nprobe", self.nprobe)
        return self._on_gpus

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._on_gpus = None
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), ADD_BLOCK):
            self._index.add_with_ids(data[start:start + ADD_BLOCK],
                                     np.ascontiguousarray(ids[start:start + ADD_BLOCK], dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        self._on_gpus = None
        if len(ids):
            self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a torn one; `OutputWriteError`."""
        def write(target: Path) -> None:
            try:
                faiss.write_index(self._index, str(target))
            except RuntimeError as exc:  # faiss reports a failed write (a full disk) as RuntimeError
                raise OSError(str(exc).splitlines()[0]) from exc

        atomic_write(path, write, "vector file")

    def set_nprobe(self, nprobe: int | None) -> None:
        self.nprobe = nprobe
        set_search_breadth(self._index, nprobe)
        self._on_gpus = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and vector ids of the `k` nearest, nearest first; id -1 pads."""
        k = min(k, len(self))
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self._searcher().search(np.ascontiguousarray(queries, dtype=np.float32), k)
        distances = squared_l2_from_scores(np.where(ids >= 0, scores, 0.0))
        distances[ids < 0] = np.inf  # fewer found than asked (an inverted file searched narrowly)
        return distances.astype(np.float32), ids
