"""Two-tower item vectors in an hnswlib graph: build, save, load, search.

The index lives next to the export it was built from, in
`EXPORT_DIR/hnsw/m{M}-efc{ef_construction}-seed{seed}/` (`index.bin` + `meta.json`), so a
second search loads it instead of rebuilding; `meta.json` records what was built and from which
model, and a graph built from other vectors is refused. By default the graph holds the items
after the MIPS transform (`mips.py`: one extra dimension, unit length, hnswlib space `ip` =
cosine distance), whose cosine ranking is the tower's dot-product ranking; `transform="none"`
builds on raw dot products (space `ip`, distance 1 − dot). Hits are re-scored exactly from the
original vectors, so a hit's score equals the exact backend's score for that item and ties
order by `ord` everywhere.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import hnswlib
import numpy as np
import orjson

from sparcode.pipeline import mips
from sparcode.pipeline import query as dsl
from sparcode.pipeline.backends import BackendError, Hit, _per_query, checked_k
from sparcode.pipeline.vectors import VectorSet
from sparcode.staging import staged_directory

INDEX_FILE = "index.bin"
META_FILE = "meta.json"
DEFAULT_EF = 100


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    seed: int = 0
    # Insertion from several threads is faster but not bit-reproducible; 1 thread is.
    threads: int = 1
    transform: str = mips.TRANSFORM

    def dirname(self) -> str:
        suffix = "" if self.transform == mips.TRANSFORM else f"-{self.transform}"
        return f"m{self.m}-efc{self.ef_construction}-seed{self.seed}{suffix}"


@dataclass
class HnswIndex:
    index: hnswlib.Index
    meta: dict

    @classmethod
    def build(cls, vectors: VectorSet, params: HnswParams = HnswParams()) -> "HnswIndex":
        if params.m < 2 or params.ef_construction < 1:
            raise dsl.QueryError(f"hnsw M must be ≥ 2 and ef_construction ≥ 1, got {params.m}, {params.ef_construction}")
        started = time.perf_counter()
        if params.transform not in mips.TRANSFORMS:
            raise dsl.QueryError(f"hnsw transform {params.transform!r}: expected one of {mips.TRANSFORMS}")
        augment = params.transform == mips.TRANSFORM
        index = hnswlib.Index(space="ip", dim=vectors.dim + augment)
        n = len(vectors.item_ids)
        index.init_index(max_elements=max(n, 1), M=params.m, ef_construction=params.ef_construction,
                         random_seed=params.seed)
        if n:
            points = mips.items(vectors.vectors, mips.max_norm(vectors.vectors)) if augment else vectors.vectors
            index.add_items(points, np.arange(n), num_threads=params.threads)
        meta = {"space": "ip", "dim": vectors.dim, "items": n, "fingerprint": vectors.fingerprint,
                **asdict(params), "build_seconds": round(time.perf_counter() - started, 3),
                "hnswlib": getattr(hnswlib, "__version__", None)}
        return cls(index, meta)

    def save(self, directory: Path) -> Path:
        """Write index.bin + meta.json into `directory` all at once (via a temporary sibling)."""
        directory = Path(directory)
        with staged_directory(directory, marker=_holds_only_an_index) as tmp:
            self.index.save_index(str(tmp / INDEX_FILE))
            (tmp / META_FILE).write_bytes(orjson.dumps(self.meta, option=orjson.OPT_INDENT_2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> "HnswIndex":
        directory = Path(directory)
        if not (directory / META_FILE).is_file() or not (directory / INDEX_FILE).is_file():
            raise UnreadableIndex(f"{directory} holds no hnsw index ({INDEX_FILE} + {META_FILE})")
        try:
            meta = orjson.loads((directory / META_FILE).read_bytes())
            meta.setdefault("transform", mips.NONE)  # graphs saved before the transform existed
            index = hnswlib.Index(space=meta["space"], dim=int(meta["dim"]) + (meta["transform"] == mips.TRANSFORM))
            index.load_index(str(directory / INDEX_FILE), max_elements=max(int(meta["items"]), 1))
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:  # orjson's error is a ValueError
            raise UnreadableIndex(f"{directory}: damaged hnsw index ({type(exc).__name__}: {exc})") from None
        return cls(index, meta)

    def size_bytes(self, directory: Path) -> int:
        return os.path.getsize(Path(directory) / INDEX_FILE)


class UnreadableIndex(BackendError):
    """A saved graph that cannot be loaded (truncated or edited meta.json or index.bin)."""


def _holds_only_an_index(directory: Path) -> bool:
    """A saved graph's folder, whole or damaged, is ours to replace; anything else in it is not."""
    names = {path.name for path in Path(directory).iterdir()}
    return bool(names) and names <= {INDEX_FILE, META_FILE}


def index_dir(export_dir, params: HnswParams) -> Path:
    return Path(export_dir) / "hnsw" / params.dirname()


def open_index(export_dir, vectors: VectorSet, params: HnswParams = HnswParams()) -> tuple[HnswIndex, bool]:
    """The saved index for these params, else a new one built and saved; (index, built now)."""
    directory = index_dir(export_dir, params)
    if (directory / META_FILE).is_file():
        try:
            loaded = HnswIndex.load(directory)
        except UnreadableIndex:
            loaded = None  # a cache: a damaged one (a truncated copy, a full disk) is rebuilt like a missing one
        if loaded is not None and loaded.meta.get("fingerprint") == vectors.fingerprint \
                and loaded.meta.get("items") == len(vectors.item_ids) and loaded.meta["transform"] == params.transform:
            return loaded, False
    built = HnswIndex.build(vectors, params)
    try:
        built.save(directory)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        # A read-only export (a shared mount, another user's files) is still served, from the graph just built.
    return built, True


class HnswBackend:
    """Approximate top-k by an hnswlib graph walk with `ef` candidates (ef ≥ k enforced)."""

    name = "hnsw"

    def __init__(self, index: HnswIndex, vectors: VectorSet, ef: int = DEFAULT_EF,
                 expected_fingerprint: str | None = None):
        if index.meta.get("fingerprint") != vectors.fingerprint:
            raise BackendError("the hnsw index was built from other vectors; rebuild it from this export")
        self._walk = mips.queries if index.meta.get("transform") == mips.TRANSFORM else np.atleast_2d
        if expected_fingerprint is not None and vectors.fingerprint != expected_fingerprint:
            raise BackendError(f"vectors are from model {vectors.fingerprint[:12]}…, expected {expected_fingerprint[:12]}…")
        self.index, self.vectors, self.fingerprint = index, vectors, vectors.fingerprint
        self.ef = int(ef)
        # ef is index-wide state in hnswlib: set once here, never per query, so threads can share it.
        index.index.set_ef(self.ef)

    @classmethod
    def open(cls, export_dir, params: HnswParams = HnswParams(), ef: int = DEFAULT_EF, **kwargs) -> "HnswBackend":
        vectors = VectorSet.load(export_dir)
        index, _ = open_index(export_dir, vectors, params)
        return cls(index, vectors, ef, **kwargs)

    def _check_k(self, k: int) -> None:
        checked_k(k)
        if self.ef < k:
            raise dsl.QueryError(f"hnsw ef={self.ef} is below k={k}: the walk keeps only ef candidates, so it "
                                 f"cannot return k good ones; use ef ≥ {k}")

    def search(self, query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        self._check_k(k)
        q = self.vectors.check_query(query)
        mask = self.vectors.allowed(filters, exclude_items)
        allowed = len(self.vectors.item_ids) if mask is None else int(mask.sum())
        want = min(k, allowed)
        # hnswlib raises when the walk finds fewer than `want` allowed items; settle for fewer.
        while want > 0:
            try:
                labels, _ = self.index.index.knn_query(self._walk(q), k=want, num_threads=1,
                                                       filter=None if mask is None else (lambda i: bool(mask[i])))
                break
            except RuntimeError:
                want //= 2
        else:
            return []
        return self.vectors.ranked(q, labels[0].astype(np.int64), k)

    def batch_search(self, queries: Sequence, k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        self._check_k(k)
        excludes = _per_query(exclude_items, len(queries))
        n = len(self.vectors.item_ids)
        if filters or any(excludes) or not len(queries) or k > n:
            return [self.search(q, k, filters, ex) for q, ex in zip(queries, excludes)]
        qs = np.stack([self.vectors.check_query(q) for q in queries])
        labels, _ = self.index.index.knn_query(self._walk(qs), k=k)
        return [self.vectors.ranked(q, row.astype(np.int64), k) for q, row in zip(qs, labels)]
