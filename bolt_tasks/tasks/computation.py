"""Tasks of the computation kind (P pool): embedding text chunks, and a pure-Python kernel."""

from __future__ import annotations

from typing import Any

from bolt_tasks import job, kernels, ledger, probes
from bolt_tasks.app import app, bolt_task
from bolt_tasks.buffers import BufferType, get_pools
from bolt_tasks.einstein import build, embed, search
from bolt_tasks.einstein.index import vectors_dir
from bolt_tasks.einstein.vectors import VectorCache
from bolt_tasks.errors import IndexMissing
from bolt_tasks.names import Kind
from bolt_tasks.settings import get_settings


@bolt_task(Kind.COMPUTATION)
def embed_chunks(
    plans: list[list[Any]], root: str, dim: int, for_index: bool = False
) -> job.Partial:
    """Embed the chunks that plan_chunks planned, reusing the vectors of files cached before.

    Returns their count and checksum and the chunks embedded and reused; for_index adds the
    per-file entries write_index assembles (the main job's report has no use for them).
    """
    cache = VectorCache(vectors_dir(get_settings().cache_dir))
    partial = build.embed_plans(root, plans, dim, cache, get_pools())
    if not for_index:
        del partial["files"]
    return partial


# IndexMissing is the user's to fix (build an index), not a failure to log with a traceback.
@bolt_task(Kind.COMPUTATION, bind=True, throws=(IndexMissing,))
def search_index(self: Any, query: str, k: int) -> dict[str, Any]:
    """The k chunks of the Einstein index most like query, and the node that answered."""
    found = search.search(query, k, get_settings(), get_pools())
    found["node"] = self.request.hostname
    return found


@bolt_task(Kind.COMPUTATION)
def embed_texts(texts: list[str], dim: int) -> job.Partial:
    """Embed texts into a buffer of the process's pools: their count and checksum.

    The weak-link analyzer's embedding work, which needs no index, no files and no cache.
    """
    with get_pools().acquire(BufferType.EMBEDDING_MATRIX, (len(texts), dim)) as vectors:
        return job.embedding_summary(embed.embed_texts(texts, dim, vectors))


@bolt_task(Kind.COMPUTATION)
def matrix_checksum(size: int, seed: int) -> dict[str, Any]:
    """Multiply two seeded size x size matrices in pure Python; the checksum and its cost."""
    return kernels.timed_checksum(size, seed)


@bolt_task(Kind.COMPUTATION)
def echo(value: Any) -> Any:
    """Return value as it came: the smallest round trip through a pool, for probes and benches."""
    return value


@bolt_task(Kind.COMPUTATION)
def hash_chain(seed: str, rounds: int, ledger_name: str | None = None) -> str:
    """SHA-256 applied rounds times to seed, the last digest in hex: a CPU probe of the pool.

    Given a ledger name, it counts itself there under its seed (bolt_tasks.ledger), so a caller
    that gives each call its own seed can check each did its work exactly once.
    """
    with ledger.counting(app.backend.client, ledger_name, seed, app.conf.result_expires):
        return probes.hash_chain(seed, rounds)
