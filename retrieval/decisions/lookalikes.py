"""A collection of look-alikes is said to be one, not deduplicated.

When most of a collection lies within the threshold of its nearest neighbour (drawings of one alphabet, scans,
flat colours, one product shot 400 times), the threshold does not tell duplicates from the rest there: dedup
would propose hundreds of different images. Then it proposes only exact copies (one content) and says why, unless
asked for near-duplicates anyway.

The share is of distinct contents (exact copies share one vector), each counted when its nearest other content
lies within the threshold. Measured with the shipped model (benchmarks/dedup_collections.py, and the test photos
of benchmarks/neardup_photos.py) at its default threshold, squared L2 0.667, and at the earlier 1.196:

                                                              at 0.667          at 1.196
    200 distinct Omniglot characters                          0.82              1.00
    200 solid colours                                         1.00              1.00
    200 distinct CIFAR-10 images                              0.00              0.40
    the 257 test photos, a share r of them with 1-2 edited copies (untrained edit families):
        r = 0.1 / 0.2 / 0.4 / 0.6 / 0.8 / 1.0   0.12 / 0.19 / 0.35 / 0.47 / 0.52 / 0.57   0.21 ... 0.88
    the same, r = 0.4, with 30 near-flat images among them    0.39 - 0.44       0.58 - 0.63

The raw backbone at its own threshold (0.624) measures Omniglot and solid colours 1.00, those photo folders 0.56 -
0.63. `LOOKALIKE_SHARE`, "most", is three quarters: above every photo folder measured at the default threshold,
even one where every photo has a copy, and below the look-alikes. The share grows with the threshold: given a
lenient one (1.196), a folder where four photos in five have copies reaches it too, and the warning says how to
ask for near-duplicates; given a stricter one, Omniglot falls under it (0.65 at 0.6), and what is proposed there
is what that threshold proposes. It does not catch a collection whose look-alikes are fewer (CIFAR's 0.40 at
1.196): the pixel rule answers for tiny and flat images.

Below `MIN_IMAGES` distinct contents a share says nothing (two photos and an edited copy of one are two thirds
within the threshold), and nothing is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.vectors.faiss_factory import EXACT, new_faiss_index
from retrieval.vectors.unit_distance import squared_l2_from_scores

LOOKALIKE_SHARE = 0.75
MIN_IMAGES = 20
SAMPLE = 2000
"""Contents whose nearest neighbour is looked up: all of them up to this many, beyond that a seeded sample of this
many (its share within about 1 % of the whole's), so the check costs a fraction of the all-pairs search."""


@dataclass(frozen=True)
class LookalikeCheck:
    """How much of a collection lies within the threshold of its nearest neighbour, and what dedup did about it:
    `share` of `images` distinct contents (measured on `sampled` of them), and whether near-duplicates were
    proposed all the same (`asked`)."""

    share: float
    images: int
    sampled: int
    asked: bool = False

    @property
    def lookalikes(self) -> bool:
        """Whether this is a collection of look-alikes: at least `MIN_IMAGES` contents, `LOOKALIKE_SHARE` of them
        within the threshold of their nearest neighbour."""
        return self.images >= MIN_IMAGES and self.share >= LOOKALIKE_SHARE

    @property
    def exact_only(self) -> bool:
        """Whether only exact copies are proposed: look-alikes, and near-duplicates not asked for."""
        return self.lookalikes and not self.asked

    def message(self) -> str:
        """One line for a person (for a collection of look-alikes)."""
        measured = "" if self.sampled >= self.images else f", measured on {self.sampled:,} of them"
        where = (f"{self.share:.0%} of these {self.images:,} distinct images lie within the threshold of their nearest "
                 f"neighbour{measured}: this looks like a collection of look-alikes")
        if self.asked:
            return f"{where}; near-duplicates are proposed among them as asked"
        return f"{where}, so only exact copies are proposed (ask for near-duplicates with --lookalikes)"

    def to_dict(self) -> dict[str, object]:
        return {"lookalikes": self.lookalikes, "share_within_threshold": round(self.share, 4), "images": self.images,
                "sampled": self.sampled, "limit": LOOKALIKE_SHARE, "exact_copies_only": self.exact_only,
                **({"message": self.message()} if self.lookalikes else {})}


def nearest_share(vectors: np.ndarray, threshold: float, asked: bool = False, sample: int = SAMPLE,
                  seed: int = 0) -> LookalikeCheck:
    """The check for the distinct contents `vectors` (L2-normalised rows), by exact nearest-neighbour search of
    all of them, or of a seeded sample of `sample` beyond that."""
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(data)
    if count < 2:
        return LookalikeCheck(0.0, count, count, asked)
    rows = np.arange(count) if count <= sample else np.sort(
        np.random.default_rng(seed).permutation(count)[:sample])
    index = new_faiss_index(data.shape[1], EXACT)
    index.add(data)
    scores, found = index.search(data[rows], 2)
    others = np.where(found[:, 0] == rows, scores[:, 1], scores[:, 0])  # the nearest that is not the row itself
    within = squared_l2_from_scores(others) <= threshold
    return LookalikeCheck(float(np.mean(within)), count, len(rows), asked)


def share_from_pairs(count: int, first: np.ndarray, second: np.ndarray, asked: bool = False) -> LookalikeCheck:
    """The check for `count` contents from their pairs within the threshold (rows `first[i]`, `second[i]`): a row
    in any pair has its nearest neighbour within it."""
    linked = np.unique(np.concatenate([first, second])) if len(first) else np.empty(0, np.int64)
    return LookalikeCheck(len(linked) / count if count else 0.0, count, count, asked)
