"""Shared fixtures: a synthetic export directory, and live Elasticsearch / OpenSearch nodes
discovered from the environment (`ELASTICSEARCH_URL`, `OPENSEARCH_URL`; default the nodes
`sparcode es start [--engine opensearch]` runs).

A test needing a node fails when none answers, naming how to start one (`scripts/test.sh`
leaves such tests out by marker instead and prints NOT TESTED for them); under CI=true any skip,
whatever its cause, is reported as a failure, so CI can never go green by skipping. A module using `engine` or `alias` sets `ENGINE = "elasticsearch"` or `"opensearch"`.
"""
from __future__ import annotations

import faulthandler
import gzip
import itertools
import json
import os
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from sparcode.featurefield import truncate
from sparcode.terms import code_to_term

FINGERPRINT = "ab12cd34" + "0" * 56
ITEM_FIELDS = {"title": "text", "genres": ["keyword"], "year": "integer", "rating": "float"}
GENRES = ["Drama", "Comedy", "Horror", "Sci-Fi"]


def write_export(path: Path, items: list[dict], *, M: int = 2, N: int = 16, sub_dim: int = 4, seed: int = 0,
                 indexed: list[str] | None = None, fingerprint: str = FINGERPRINT,
                 item_fields: dict | None = None) -> Path:
    """Write manifest.json, items.jsonl.gz and codes.npz exactly as docs/export-format.md says."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    codebooks = rng.standard_normal((M, N, sub_dim)).astype(np.float32)
    terms = indexed if indexed is not None else sorted({t for it in items for t in it["codes"]})
    codes = [tuple(int(p) for p in t[1:].split("_")) for t in terms]
    vectors = np.stack([np.concatenate([codebooks[m, i] for m, i in enumerate(c)]) for c in codes]) \
        if codes else np.zeros((0, M * sub_dim), np.float32)
    np.savez(path / "codes.npz", terms=np.asarray(terms), vectors=vectors, codebooks=codebooks)
    with gzip.open(path / "items.jsonl.gz", "wb") as fh:
        for item in items:
            fh.write(orjson.dumps(item) + b"\n")
    pairs = sum(len(it["codes"]) for it in items)
    manifest = {
        "format": "sparcode-export/1", "kind": "sparcode", "fingerprint": fingerprint,
        "run": {"model": "sparcode", "dataset": "synthetic", "split": "multi-target", "seed": seed},
        "quantizer": {"M": M, "N": N, "dim": M * sub_dim}, "tokens_per_user": 4, "bias": -1.0,
        "max_postings": None, "items": len(items), "codes": len(terms), "pairs": pairs,
        "stored_fraction": pairs / max(len(terms) * len(items), 1),
        "postings_per_code": {"mean": pairs / max(len(terms), 1), "p50": 0, "p99": 0, "max": 0},
        "item_fields": item_fields if item_fields is not None else ITEM_FIELDS,
        "files": {"items": ["items.jsonl.gz"], "codes": "codes.npz"},
        "created": "2026-11-22T19:00:00Z", "export_seconds": 0.1,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def random_items(n_items: int = 400, n_terms: int = 60, *, M: int = 2, N: int = 16, seed: int = 0) -> list[dict]:
    """Items with random truncated scores; some share their codes exactly, some have none."""
    rng = np.random.default_rng(seed)
    all_codes = list(itertools.product(range(N), repeat=M))
    picked = rng.choice(len(all_codes), size=n_terms, replace=False)
    terms = sorted(code_to_term(all_codes[i]) for i in picked)
    items = []
    for ord_ in range(n_items):
        if ord_ % 50 == 7:
            codes = {}
        elif ord_ % 10 == 3 and ord_ > 10:
            codes = dict(items[ord_ - 10]["codes"])  # an exact duplicate: a guaranteed tie
        else:
            chosen = rng.choice(n_terms, size=int(rng.integers(1, 12)), replace=False)
            values = truncate(rng.exponential(1.0, size=len(chosen)) + 1e-3)
            codes = {terms[c]: float(v) for c, v in zip(chosen, values)}
        items.append({"item_id": f"i{ord_:04d}", "ord": ord_, "codes": codes,
                      "title": f"Movie {ord_}", "genres": [GENRES[ord_ % 4], GENRES[(ord_ // 4) % 4]],
                      "year": 1990 + ord_ % 20, "rating": [1.5, 2.5, None][ord_ % 3]})
    return items


def random_queries(export_dir: Path, n: int, *, seed: int = 1, unindexed: bool = True) -> list[dict[str, float]]:
    """User queries {term: count}: K=4 tokens over indexed terms, sometimes an unindexed code."""
    rng = np.random.default_rng(seed)
    with np.load(export_dir / "codes.npz") as npz:
        terms = [str(t) for t in npz["terms"]]
        N = npz["codebooks"].shape[1]
    queries = []
    for _ in range(n):
        q: dict[str, float] = {}
        for _ in range(4):
            if unindexed and rng.random() < 0.15:
                term = code_to_term((int(rng.integers(N)), int(rng.integers(N))))
            else:
                term = terms[int(rng.integers(len(terms)))]
            q[term] = q.get(term, 0.0) + 1.0
        queries.append(q)
    return queries


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("export"), random_items())


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


_MARKER = {"elasticsearch": "es", "opensearch": "opensearch"}
_FIXTURE = {"elasticsearch": "es_engine", "opensearch": "os_engine"}


def live_engine(name: str):
    """A checked engine at <ENGINE>_URL. None is a failure, never a skip: a run without a node
    deselects these tests by their marker instead (scripts/test.sh does, saying so)."""
    from sparcode.pipeline.connect import ConnectionProblem, connect

    try:
        return connect(engine=name)
    except ConnectionProblem as exc:
        problem = str(exc)
    prefix = "CI=true and no" if in_ci() else "no"
    pytest.fail(f"{prefix} usable {name}: {problem} (`bash scripts/test.sh` starts one; "
                f"-m 'not {_MARKER[name]}' leaves these tests out)", pytrace=False)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    """Every test that reaches a live engine carries its marker, so `-m 'not es'` leaves out
    exactly the tests that would fail without a node."""
    for item in items:
        names = set(item.fixturenames)
        if "engine" in names:
            names.add(_FIXTURE[item.module.ENGINE])
        for engine, fixture in _FIXTURE.items():
            if fixture in names:
                item.add_marker(_MARKER[engine])


def pytest_unconfigure(config):
    # Once the run is over the interpreter should exit at once. If a thread left behind keeps it
    # alive (CI once hung there after every test had passed), print every thread's stack
    # and exit non-zero instead of hanging until CI's time runs out.
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)


EXIT_GRACE_S = 120


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true no test may skip, whatever skipped it (a marker, a plugin, a helper):
    a skip there is reported as a failure naming its reason."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome, report.longrepr = "failed", f"skipped under CI=true: {reason}"


@pytest.fixture(scope="session")
def es_engine():
    return live_engine("elasticsearch")


@pytest.fixture(scope="session")
def os_engine():
    return live_engine("opensearch")


@pytest.fixture(scope="module")
def engine(request):
    """The live engine named by the test module's `ENGINE` ("elasticsearch" or "opensearch")."""
    return request.getfixturevalue(_FIXTURE[request.module.ENGINE])


def run_cli(*args, env=None):
    """`sparcode ARGS…` through click's CliRunner; exceptions propagate so tracebacks show."""
    from click.testing import CliRunner

    from sparcode.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def drop_alias_family(engine, alias: str) -> None:
    # Wildcard deletes are refused by default (action.destructive_requires_name), so name them.
    names = engine.matching(f"{alias}-*")
    if names:
        engine.delete_indices(sorted(names))


@pytest.fixture
def alias(engine):
    """A unique alias for one test on the module's `engine`; its indices are deleted afterwards."""
    name = f"sparcode-test-{uuid.uuid4().hex[:10]}"
    yield name
    drop_alias_family(engine, name)
