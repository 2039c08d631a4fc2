"""Content identity of image data: SHA-256, which recognises moved, copied and touched files.

A content hash is also a file name (a thumbnail is cached as `<hash>-<size>.jpg`, a model kept as
`<hash>.safetensors`), so `is_content_hash` is the one rule for what may be taken as one: 64 lower-case hex
digits, as `hexdigest` writes them, and nothing else (no `/`, no `..`).
"""

from __future__ import annotations

import hashlib
import re

_CONTENT_HASH = re.compile(r"[0-9a-f]{64}")


def is_content_hash(value: object) -> bool:
    """Whether `value` is a SHA-256 as simsearch writes it: a str of 64 lower-case hex digits."""
    return isinstance(value, str) and _CONTENT_HASH.fullmatch(value) is not None


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
