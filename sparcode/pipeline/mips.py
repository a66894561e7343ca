"""Maximum inner product search as nearest-neighbour search (Bachrach et al., RecSys 2014).

A graph index walks towards neighbours; inner product is not a distance (an item is not its own
best match, long vectors are everyone's best match), and on the ml-1m two-tower run a graph
built on raw dot products found 36 % of the exact top 50 at ef 100 (hnswlib `ip`; ES
`max_inner_product` alike). Appending sqrt(R² − |x|²) to each item x (R = the largest item
norm) puts every item on the sphere of radius R; a query (q, 0) then has
cos((q, 0), (x, ·)) = q·x / (|q| R), so the cosine ranking *is* the dot-product ranking and
the graph is built in a true metric (96 % at ef 100 on the same run). Both vectors are scaled
to unit length, which is what `dot_product` similarity in Elasticsearch requires.

It is not a free win: on isotropic Gaussian vectors the extra coordinate crowds items near one
pole and the same graph finds 63 % where raw inner product finds 99.9 %. The real tower's
users point away from most items (their top 50 are low-norm items at cosine ≈ 0), the regime
raw inner-product graphs fail in, so the transform is the default and `none` stays available.
"""
from __future__ import annotations

import numpy as np

TRANSFORM = "mips-augment-v1"
NONE = "none"
TRANSFORMS = (TRANSFORM, NONE)


def max_norm(vectors: np.ndarray) -> float:
    norms = np.sqrt((np.asarray(vectors, dtype=np.float64) ** 2).sum(axis=1))
    return float(norms.max()) if len(norms) and norms.max() > 0 else 1.0


def items(vectors: np.ndarray, radius: float) -> np.ndarray:
    """float32 (n, dim + 1) unit vectors; `radius` must be ≥ every item's norm."""
    v = np.asarray(vectors, dtype=np.float64)
    extra = np.sqrt(np.maximum(radius ** 2 - (v ** 2).sum(axis=1), 0.0))
    return (np.hstack([v, extra[:, None]]) / radius).astype(np.float32)


def queries(q: np.ndarray) -> np.ndarray:
    """float32 (…, dim + 1) unit queries; a zero query stays zero (every item ties at dot 0)."""
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.hstack([q / np.where(norms > 0, norms, 1.0), np.zeros((len(q), 1))])
    return out.astype(np.float32)


def dot_from_cosine(cosine: float, query_norm: float, radius: float) -> float:
    return cosine * query_norm * radius
