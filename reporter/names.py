"""File-name-safe names for runs and pages.

Model names, versions and layer names come from users and from ONNX files: they may hold
slashes, spaces, markup or 300 characters. The run cache and the site name folders and pages
after them through `slug`, and `unique` keeps two names apart when their slugs read alike.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

__all__ = ["slug", "unique"]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def slug(text: str) -> str:
    """A file-name-safe form of a name: letters, digits, '.', '_' and '-' kept, the rest '_', ≤ 60 chars."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._") or "_"
    if cleaned != text or len(cleaned) > 60:  # distinct names never share a slug
        cleaned = f"{cleaned[:50]}-{_short_hash(text)}"
    return cleaned


def unique(candidates: list[tuple[str, str]]) -> list[str]:
    """File names from (readable name, identity) pairs: a readable name that two identities share
    ("a-b" + "c" and "a" + "b-c" both read "a-b-c") gets a hash of each identity appended."""
    counts = Counter(name for name, _ in candidates)
    return [name if counts[name] == 1 else f"{name}-{_short_hash(identity)}" for name, identity in candidates]
