"""What the evaluation functions take: a function from uint8 images to L2-normalised embeddings."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

EmbedFunction = Callable[[Tensor], Tensor]
