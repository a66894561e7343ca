"""What Lucene's FeatureField does to a stored value, reproduced offline.

`sparse_vector` and `rank_features` both store scores as FeatureField, which keeps only the
top 9 significant bits of the float32 (``bits & 0xFFFF8000``) and rejects values that are not
positive normal floats. Offline evaluation and the embedded backend apply the same truncation,
so they rank exactly as the engine does.
"""
from __future__ import annotations

import numpy as np

_KEEP_MASK = np.uint32(0xFFFF8000)
# Smallest positive normal float32: FeatureField rejects subnormals and zero.
MIN_STORABLE = float(np.finfo(np.float32).tiny)


def truncate(values) -> np.ndarray:
    """Truncate to FeatureField precision (float32 with 9 significant bits), as Lucene stores it."""
    arr = np.ascontiguousarray(values, dtype=np.float32)
    return (arr.view(np.uint32) & _KEEP_MASK).view(np.float32)


def storable(values) -> np.ndarray:
    """Mask of values a FeatureField accepts after truncation: finite positive normal floats."""
    arr = truncate(values)
    return np.isfinite(arr) & (arr >= MIN_STORABLE)
