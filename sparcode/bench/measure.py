"""Timing primitives shared by every bench path: warm single-query latency, 2-thread QPS."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

# A timed call returns the engine's own `took` in ms (None for in-process paths).
Timed = Callable[[object], "float | None"]


def percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return round(float(np.percentile(arr, 50)), 3), round(float(np.percentile(arr, 99)), 3)


def latency(call: Timed, queries: Sequence, warmup: int) -> dict:
    """One query at a time after `warmup` untimed ones: client p50/p99 and engine `took` p50/p99."""
    for q in queries[:warmup]:
        call(q)
    client, took = [], []
    for q in queries:
        started = time.perf_counter()
        engine_ms = call(q)
        client.append((time.perf_counter() - started) * 1000.0)
        if engine_ms is not None:
            took.append(engine_ms)
    p50, p99 = percentiles(client)
    t50, t99 = percentiles(took)
    return {"p50_ms": p50, "p99_ms": p99, "took_p50_ms": t50, "took_p99_ms": t99}


def qps(call: Timed, queries: Sequence, threads: int = 2) -> float:
    """Queries per second with `threads` clients splitting the queries between them."""
    chunks = [queries[i::threads] for i in range(threads)]

    def run(chunk):
        for q in chunk:
            call(q)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, chunks))
    return round(len(queries) / (time.perf_counter() - started), 1)
