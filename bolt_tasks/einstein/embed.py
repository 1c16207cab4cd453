"""Embedding text as L2-normalised, signed feature-hashed token vectors.

A token is an identifier or a number; an identifier also contributes its lower-cased parts
(``readSourceFile`` and ``read_source_file`` both give read, source, file), so a query in words
finds code that spells them in either style. Each feature lands in one of ``dim`` buckets with
a sign, both taken from its CRC-32, which is stable across processes and machines (Python's own
hash() is not). Counts are damped with log(1 + n) before the vector is normalised.

Tokens are looked up once in a per-process vocabulary that holds each token's buckets and signs
as a row of a padded table, so embedding a block of texts is a handful of numpy gathers and one
bincount rather than a Python loop over every token.
"""

from __future__ import annotations

import re
import zlib
from itertools import chain

import numpy as np

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Features per token: the whole token and up to seven parts; longer names keep their first parts.
MAX_FEATURES = 8
# Texts embedded per numpy pass: bounds the gather arrays to a few tens of MB.
BLOCK_TEXTS = 2048
# The vocabulary of a large code base is a few hundred thousand tokens; past this, start over.
VOCABULARY_MAX = 1_000_000
# Part of every cached vector's key (einstein/vectors.py): raise it whenever embed_texts gives
# different vectors, so vectors cached by an older bolt are never mixed with new ones.
EMBED_VERSION = 1


def token_words(token: str) -> list[str]:
    """The lower-cased words a token stands for: itself first, then its distinct parts."""
    words = [token.lower()]
    for part in _PART.findall(token):
        word = part.lower()
        if word not in words:
            words.append(word)
    return words[:MAX_FEATURES]


class _Vocabulary:
    """Every token seen so far, with its feature buckets and signs as one row of a table."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: dict[str, int] = {}
        self.buckets = np.zeros((4096, MAX_FEATURES), dtype=np.int64)
        self.signs = np.zeros((4096, MAX_FEATURES), dtype=np.float64)  # 0 pads unused columns

    def lookup(self, tokens: list[str]) -> np.ndarray:
        """Row ids of the tokens, adding the ones never seen before."""
        get = self.ids.get
        found = [get(token, -1) for token in tokens]
        if -1 in found:
            pairs = zip(tokens, found, strict=True)
            found = [self._add(token) if row < 0 else row for token, row in pairs]
        return np.asarray(found, dtype=np.int64)

    def _add(self, token: str) -> int:
        row = self.ids.get(token)
        if row is not None:
            return row
        row = len(self.ids)
        if row == len(self.buckets):
            self.buckets = np.concatenate([self.buckets, np.zeros_like(self.buckets)])
            self.signs = np.concatenate([self.signs, np.zeros_like(self.signs)])
        for column, word in enumerate(token_words(token)):
            crc = zlib.crc32(word.encode())
            self.buckets[row, column] = crc % self.dim
            self.signs[row, column] = -1.0 if crc >> 31 else 1.0
        self.ids[token] = row
        return row


_VOCABULARIES: dict[int, _Vocabulary] = {}


def _vocabulary(dim: int) -> _Vocabulary:
    vocabulary = _VOCABULARIES.get(dim)
    if vocabulary is None or len(vocabulary.ids) >= VOCABULARY_MAX:
        vocabulary = _VOCABULARIES[dim] = _Vocabulary(dim)
    return vocabulary


def tokens(text: str) -> list[str]:
    """The tokens of a text, in order."""
    return _TOKEN.findall(text)


def embed_texts(texts: list[str], dim: int, out: np.ndarray | None = None) -> np.ndarray:
    """One float32 row of width dim per text, each of unit length (or zero for no tokens).

    With out (float32, shape (len(texts), dim): a pooled buffer, say) the rows go there.
    """
    if out is None:
        out = np.zeros((len(texts), dim), dtype=np.float32)
    for first in range(0, len(texts), BLOCK_TEXTS):
        block = texts[first : first + BLOCK_TEXTS]
        out[first : first + len(block)] = _embed_block(block, dim)
    return out


def _embed_block(texts: list[str], dim: int) -> np.ndarray:
    vocabulary = _vocabulary(dim)
    token_lists = [_TOKEN.findall(text) for text in texts]
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(texts))
    ids = vocabulary.lookup(list(chain.from_iterable(token_lists)))
    rows = np.repeat(np.arange(len(texts), dtype=np.int64) * dim, lengths)
    cells = (rows[:, None] + vocabulary.buckets[ids]).ravel()
    counts = np.bincount(cells, weights=vocabulary.signs[ids].ravel(), minlength=len(texts) * dim)
    vectors = (np.sign(counts) * np.log1p(np.abs(counts))).reshape(len(texts), dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors
