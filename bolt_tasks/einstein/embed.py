"""Embedding text as L2-normalised, signed feature-hashed token vectors.

A token is an identifier or a number; an identifier also contributes its lower-cased parts
(``readSourceFile`` and ``read_source_file`` both give read, source, file), so a query in words
finds code that spells them in either style. Each feature lands in one of ``dim`` buckets with
a sign, both taken from its CRC-32, which is stable across processes and machines (Python's own
hash() is not). Counts are damped with log(1 + n) before the vector is normalised.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Features of tokens already seen: (token, dim) -> bucket indices with the sign in bit 0.
_FEATURES: dict[tuple[str, int], tuple[int, ...]] = {}
# The vocabulary of a large code base is a few hundred thousand tokens; past this, start over.
_FEATURES_MAX = 1_000_000


def _features(token: str, dim: int) -> tuple[int, ...]:
    key = (token, dim)
    found = _FEATURES.get(key)
    if found is not None:
        return found
    words = {token.lower()}
    words.update(part.lower() for part in _PART.findall(token))
    encoded = []
    for word in sorted(words):
        crc = zlib.crc32(word.encode())
        encoded.append(((crc % dim) << 1) | (crc >> 31))
    if len(_FEATURES) >= _FEATURES_MAX:
        _FEATURES.clear()
    found = _FEATURES[key] = tuple(encoded)
    return found


def tokens(text: str) -> list[str]:
    """The tokens of a text, in order."""
    return _TOKEN.findall(text)


def embed_texts(texts: list[str], dim: int) -> np.ndarray:
    """One float32 row of width dim per text, each of unit length (or zero for no tokens)."""
    rows: list[int] = []
    encoded: list[int] = []
    weights: list[int] = []
    for row, text in enumerate(texts):
        for token, count in Counter(_TOKEN.findall(text)).items():
            features = _features(token, dim)
            encoded.extend(features)
            weights.extend([count] * len(features))
        rows.extend([row] * (len(encoded) - len(rows)))
    codes = np.asarray(encoded, dtype=np.int64)
    cells = np.asarray(rows, dtype=np.int64) * dim + (codes >> 1)
    signed = np.asarray(weights, dtype=np.float64) * (1.0 - 2.0 * (codes & 1))
    counts = np.bincount(cells, weights=signed, minlength=len(texts) * dim)
    vectors = (np.sign(counts) * np.log1p(np.abs(counts))).reshape(len(texts), dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors.astype(np.float32)
