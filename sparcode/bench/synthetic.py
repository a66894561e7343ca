"""Synthetic catalogs at any size, shaped like a real model's exports.

Real models only exist at ml-1m / Beauty sizes (a few thousand items), so `sparcode bench`
scales a *shape* to 10k–1M items. What decides engine cost is kept from a real export when one
is given, else taken from the ES calibration in issue 5 (4,096 Zipf-popular codes, 32 codes per
item, 4-code queries; 64-d vectors):

- SparCode: number of indexed codes, codes per item, how postings spread over codes (each
  code's share of all postings, so posting-list lengths grow with the catalog as they do at a
  fixed stored fraction), and the distribution of stored scores (their skew decides pruning).
  Queries draw `tokens_per_user` × `query_probes` codes with the same popularity.
- With `posting_cap` the catalog is instead shaped like an index built with a per-code cap
  (`export --max-postings`): every list holds about `posting_cap` items whatever the catalog
  size, so the number of codes grows with the catalog (items × codes per item / cap) and
  queries draw their codes uniformly. What a query costs then stays flat as items grow.
- Two-tower: dimension and the distribution of item-vector norms; directions are clustered
  around random centres (real embeddings are not uniform on the sphere, and uniform vectors
  are the worst case for a graph index).

Everything a bench measures on these catalogs is marked `"synthetic": true`; quality is recall
against the exact ranking of the same synthetic model, not a recommendation metric.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from sparcode.featurefield import MIN_STORABLE, truncate
from sparcode.pipeline.export import Export, ExportError
from sparcode.pipeline.vectors import open_vector_export, write_vector_export
from sparcode.terms import code_to_term

CODEBOOK = 64  # N per codebook; two codebooks spell up to 4,096 codes


@dataclass
class SparcodeShape:
    codes: int = 4096
    codes_per_item: int = 32
    tokens_per_user: int = 4
    query_probes: int = 1  # indexed codes each token queries (serve.query_probes)
    posting_cap: int | None = None
    zipf: float = 1.0  # used only when `popularity` is not measured
    popularity: list[float] = field(default_factory=list)  # share of postings per code, descending
    score_quantiles: list[float] = field(default_factory=list)  # 101 quantiles of stored scores
    source: str = "issue-5 calibration (Zipf codes, exponential scores)"

    @classmethod
    def from_export(cls, path) -> "SparcodeShape":
        """Measure the shape of a real SparCode export."""
        export = Export.open(path)
        kind = export.manifest.get("kind", "sparcode")
        if kind != "sparcode":
            raise ExportError(f"{path} is a {kind} export; --from-export takes its shape from a SparCode export")
        counts: dict[str, int] = {}
        values: list[float] = []
        for item in export.items():
            for term, value in (item.get("codes") or {}).items():
                counts[term] = counts.get(term, 0) + 1
                if len(values) < 1_000_000:
                    values.append(value)
        if not counts:
            raise ExportError(f"{path} stores no postings to take a shape from")
        per_code = np.sort(np.asarray(list(counts.values()), dtype=np.float64))[::-1]
        # Every code the export stores: fewer would pile its postings onto longer lists.
        return cls(codes=len(per_code), codes_per_item=max(1, round(per_code.sum() / export.n_items)),
                   tokens_per_user=int(export.manifest.get("tokens_per_user", 4)),
                   query_probes=int(export.manifest.get("query_probes", 1)),
                   popularity=(per_code / per_code.sum()).tolist(),
                   score_quantiles=np.quantile(values, np.linspace(0, 1, 101)).tolist(), source=str(path))

    @property
    def query_codes(self) -> int:
        return self.tokens_per_user * self.query_probes

    def codes_at(self, items: int) -> int:
        """Indexed codes in a catalog of `items`: fixed, or growing with it under a posting cap."""
        if self.posting_cap is None:
            return self.codes
        return max(self.codes_per_item, -(-items * self.codes_per_item // self.posting_cap))

    def probabilities(self, items: int | None = None) -> np.ndarray:
        if self.posting_cap is not None:
            n = self.codes_at(items or 0)
            return np.full(n, 1.0 / n)
        if self.popularity:
            p = np.asarray(self.popularity, dtype=np.float64)
        else:
            p = 1.0 / np.arange(1, self.codes + 1) ** self.zipf
        return p / p.sum()

    def scores(self, rng, n: int) -> np.ndarray:
        if self.score_quantiles:
            q = np.asarray(self.score_quantiles)
            raw = np.interp(rng.random(n), np.linspace(0, 1, len(q)), q)
        else:
            raw = rng.exponential(1.0, n)
        return truncate(np.maximum(raw, MIN_STORABLE * 4))


@dataclass
class VectorShape:
    dim: int = 64
    norm_mean: float = 3.0
    norm_std: float = 0.3
    clusters: int = 256
    source: str = "issue-5 calibration (64-d)"

    @classmethod
    def from_export(cls, path) -> "VectorShape":
        export = open_vector_export(path)
        norms = export.manifest.get("norms") or {}
        return cls(dim=int(export.manifest["dim"]), norm_mean=float(norms.get("mean", 1.0)),
                   norm_std=float(norms.get("std", 0.0)), source=str(path))

    def sample(self, rng, n: int, centres: np.ndarray) -> np.ndarray:
        directions = centres[rng.integers(len(centres), size=n)] + 0.6 * rng.standard_normal((n, self.dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        # Lognormal with the measured mean and spread: norms stay positive and right-skewed.
        sigma2 = np.log1p((self.norm_std / max(self.norm_mean, 1e-9)) ** 2)
        norms = rng.lognormal(np.log(max(self.norm_mean, 1e-9)) - sigma2 / 2, np.sqrt(sigma2), (n, 1))
        return (directions * norms).astype(np.float32)

    def centres(self, rng) -> np.ndarray:
        c = rng.standard_normal((self.clusters, self.dim))
        return c / np.linalg.norm(c, axis=1, keepdims=True)


def fingerprint(kind: str, items: int, seed: int) -> str:
    import hashlib

    return hashlib.sha256(f"synthetic-{kind}-{items}-{seed}".encode()).hexdigest()


def sparcode_catalog(path, shape: SparcodeShape, items: int, seed: int = 0) -> Path:
    """A SparCode export (docs/export-format.md) of `items` synthetic items."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n_codes = shape.codes_at(items)
    book = codebook_size(n_codes)
    terms = np.asarray([code_to_term((j // book, j % book)) for j in range(n_codes)])
    cdf = np.cumsum(shape.probabilities(items))
    pairs = 0
    per_code = np.zeros(n_codes, dtype=np.int64)
    with gzip.open(path / "items.jsonl.gz", "wb", compresslevel=1) as fh:
        for start in range(0, items, 50_000):
            n = min(50_000, items - start)
            drawn = np.minimum(np.searchsorted(cdf, rng.random((n, shape.codes_per_item)) * cdf[-1]), n_codes - 1)
            drawn.sort(axis=1)
            keep = np.ones_like(drawn, dtype=bool)
            keep[:, 1:] = drawn[:, 1:] != drawn[:, :-1]  # a popular code drawn twice is stored once
            scores = shape.scores(rng, drawn.size).reshape(drawn.shape)
            np.add.at(per_code, drawn[keep], 1)
            lines = []
            for row in range(n):
                mask = keep[row]
                codes = dict(zip(terms[drawn[row][mask]].tolist(), scores[row][mask].tolist()))
                pairs += len(codes)
                lines.append(orjson.dumps({"item_id": f"s{start + row}", "ord": start + row, "codes": codes}))
            fh.write(b"\n".join(lines) + b"\n")
    codebooks = rng.standard_normal((2, book, 8)).astype(np.float32)
    index = np.arange(n_codes)
    vectors = np.concatenate([codebooks[0, index // book], codebooks[1, index % book]], axis=1)
    np.savez(path / "codes.npz", terms=terms, vectors=vectors, codebooks=codebooks)
    manifest = {
        "format": "sparcode-export/1", "kind": "sparcode", "fingerprint": fingerprint("sparcode", items, seed),
        "run": {"model": "sparcode", "dataset": "synthetic", "split": None, "seed": seed},
        "synthetic": {"shape": asdict(shape) | {"popularity": len(shape.popularity), "score_quantiles": len(shape.score_quantiles)}},
        "quantizer": {"M": 2, "N": book, "dim": 16}, "tokens_per_user": shape.tokens_per_user,
        "query_probes": shape.query_probes, "bias": 0.0,
        "max_postings": shape.posting_cap, "items": items, "codes": n_codes, "pairs": pairs,
        # Below `shape.codes_per_item`: a code drawn twice for one item is stored once.
        "postings_per_item": {"drawn": shape.codes_per_item, "mean": pairs / max(items, 1)},
        "stored_fraction": pairs / max(n_codes * items, 1),
        "postings_per_code": {"mean": float(per_code.mean()), "p50": float(np.percentile(per_code, 50)),
                              "p99": float(np.percentile(per_code, 99)), "max": int(per_code.max())},
        "item_fields": {}, "files": {"items": ["items.jsonl.gz"], "codes": "codes.npz"},
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def codebook_size(codes: int) -> int:
    """N per codebook for two codebooks spelling `codes` codes (at least the calibration's 64)."""
    return max(CODEBOOK, int(np.ceil(np.sqrt(codes))))


def sparcode_queries(shape: SparcodeShape, n: int, seed: int = 1, items: int = 0) -> list[dict[str, float]]:
    """`n` queries of `shape.query_codes` codes each (repeats add up, as a user's tokens do)."""
    rng = np.random.default_rng(seed)
    n_codes = shape.codes_at(items)
    book = codebook_size(n_codes)
    cdf = np.cumsum(shape.probabilities(items))
    drawn = np.minimum(np.searchsorted(cdf, rng.random((n, shape.query_codes)) * cdf[-1]), n_codes - 1)
    queries = []
    for row in drawn:
        q: dict[str, float] = {}
        for j in row:
            term = code_to_term((int(j) // book, int(j) % book))
            q[term] = q.get(term, 0.0) + 1.0
        queries.append(q)
    return queries


def vector_catalog(path, shape: VectorShape, items: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    vectors = shape.sample(rng, items, shape.centres(np.random.default_rng(seed + 1000)))
    return write_vector_export(path, vectors, fingerprint=fingerprint("two-tower", items, seed),
                               item_ids=[f"s{i}" for i in range(items)],
                               run={"model": "two-tower", "dataset": "synthetic", "seed": seed},
                               extra={"synthetic": {"shape": asdict(shape)}})


def vector_queries(shape: VectorShape, n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` query vectors around the centres of the catalog made with the same `seed` (users like
    what exists); the draw itself comes from another stream than the catalog's items."""
    return list(shape.sample(np.random.default_rng(seed + 2000), n, shape.centres(np.random.default_rng(seed + 1000))))
