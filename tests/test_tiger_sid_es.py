"""Semantic-ID prefixes as Elasticsearch terms: the engine's prefix lookup returns exactly what
the in-process `ColdIndex` / `PrefixTrie` return, in the same order, on a live node."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.data.dataset import Dataset
from sparcode.generative.beam import ColdIndex
from sparcode.generative.semantic_ids import PrefixTrie, add_dedup_token, save_ids, vocab_sizes
from sparcode.generative.sid_export import export_semantic_ids, sid_fingerprint
from sparcode.pipeline import indexer
from sparcode.pipeline.backends import BackendError
from sparcode.pipeline.export import Export
from sparcode.pipeline.sid_search import SidPrefixBackend, ordered_terms, prefix_body
from sparcode.sid_terms import prefix_term, prefix_terms, term_prefix

ENGINE = "elasticsearch"
N_ITEMS = 300


def toy_run(tmp_path, n_items=N_ITEMS, cold_share=0.3, seed=0):
    """A run directory holding only what the export reads: semantic IDs and the cold list.
    Small vocabularies make many items share prefixes at every depth."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, v, size=n_items) for v in (5, 4, 3)], axis=1)
    ids = add_dedup_token(codes)
    dataset = Dataset("toy", ["u0"], [f"item-{i}" for i in range(n_items)], [np.array([0], dtype=np.int64)],
                      item_attributes=[{"categories": ["Beauty", f"c{i % 7}"]} for i in range(n_items)],
                      item_attribute_types={"categories": "keyword"})
    save_ids(tmp_path / "tiger", ids, {"vocab": vocab_sizes(ids, 5), "item_ids": dataset.item_ids})
    cold = np.sort(rng.choice(n_items, size=int(cold_share * n_items), replace=False)).astype(np.int64)
    np.save(tmp_path / "tiger" / "cold_items.npy", cold)
    return dataset, ids, cold


def test_term_spelling_roundtrip_and_depths():
    assert prefix_terms([12, 201, 7, 0], [1, 2, 3]) == ["sid_12", "sid_12_201", "sid_12_201_7"]
    assert term_prefix("sid_12_201") == (12, 201)
    with pytest.raises(ValueError):
        term_prefix("c0012_0201")
    with pytest.raises(ValueError):
        prefix_term([])
    # Deeper first, then beam order, each term once.
    assert ordered_terms([[1, 2, 3, 0], [1, 2, 4, 0], [5, 6, 7, 0]], [3, 2]) == \
        ["sid_1_2_3", "sid_1_2_4", "sid_5_6_7", "sid_1_2", "sid_5_6"]


def test_export_lines_hold_every_prefix_and_the_cold_flag(tmp_path):
    dataset, ids, cold = toy_run(tmp_path / "run")
    manifest = export_semantic_ids(tmp_path / "run", dataset, tmp_path / "export", {"model": "tiger"})
    export = Export.open(tmp_path / "export")
    assert export.validate() == N_ITEMS
    assert manifest["fingerprint"] == sid_fingerprint(tmp_path / "run") and manifest["cold_items"] == len(cold)
    for line in export.items():
        row = ids[line["ord"]]
        assert line["item_id"] == dataset.item_ids[line["ord"]]
        assert line["sid"] == [prefix_term(row[:d]) for d in range(1, 5)]
        assert line["cold"] == int(line["ord"] in set(cold.tolist()))
    with pytest.raises(ValueError, match="--force"):
        export_semantic_ids(tmp_path / "run", dataset, tmp_path / "export", {})


def test_pipeline_stays_torch_free():
    code = ("import sys, sparcode.pipeline.sid_search, sparcode.generative.sid_export; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture
def indexed(tmp_path, engine, alias):
    dataset, ids, cold = toy_run(tmp_path / "run")
    export_semantic_ids(tmp_path / "run", dataset, tmp_path / "export", {"model": "tiger"})
    indexer.build(engine, Export.open(tmp_path / "export"), alias, progress=False)
    backend = SidPrefixBackend(engine, alias, expected_fingerprint=sid_fingerprint(tmp_path / "run"))
    return dataset, ids, cold, backend


@pytest.mark.es
def test_engine_prefix_lookup_equals_cold_index(indexed):
    dataset, ids, cold, backend = indexed
    rng = np.random.default_rng(1)
    reference = ColdIndex(ids, cold, depth=3)
    batch, skips, expected = [], [], []
    for trial in range(40):
        generated = rng.choice(N_ITEMS, size=int(rng.integers(1, 12)), replace=False)
        skip = set(generated.tolist()) | set(rng.choice(N_ITEMS, size=int(rng.integers(0, 30))).tolist())
        batch.append(ids[generated].tolist())
        skips.append([dataset.item_ids[i] for i in skip])
        expected.append(reference.candidates(generated, skip))
    found = backend.batch_search(batch, reference.depths, 1000, exclude_items=skips)
    assert sum(len(e) for e in expected) > 100  # the comparison is not between empty lists
    for got, want in zip(found, expected):
        assert [h.ord for h in got] == want
        assert [h.item_id for h in got] == [dataset.item_ids[i] for i in want]
    # size = k returns the first k of the same order (what ColdIndex.mix keeps).
    for ids_, skip, want in zip(batch[:10], skips[:10], expected[:10]):
        assert [h.ord for h in backend.search(ids_, reference.depths, 3, exclude_items=skip)] == want[:3]


@pytest.mark.es
def test_engine_prefix_lookup_over_all_items_equals_the_trie(indexed):
    _, ids, _, backend = indexed
    trie = PrefixTrie.build(ids)
    for row in ids[:25]:
        for depth in (1, 2, 3, 4):
            want = trie.items_with_prefix(row[:depth]).tolist()
            got = backend.search([row.tolist()], [depth], 1000, only_cold=False)
            assert [h.ord for h in got] == want and len(want) >= 1


@pytest.mark.es
def test_backend_refuses_other_semantic_ids_and_other_kinds(indexed, engine, alias):
    with pytest.raises(BackendError, match="semantic IDs"):
        SidPrefixBackend(engine, alias, expected_fingerprint="f" * 64)
    with pytest.raises(BackendError, match="no index"):
        SidPrefixBackend(engine, alias + "-missing")


def test_prefix_body_is_one_request_with_ordered_boosts():
    body = prefix_body([[1, 2, 3, 0], [1, 2, 4, 0]], [3, 2], 5, exclude_items=["b", "a"])
    clauses = body["query"]["bool"]["must"][0]["dis_max"]["queries"]
    assert [c["constant_score"]["boost"] for c in clauses] == [3.0, 2.0, 1.0]
    assert body["query"]["bool"]["must_not"] == [{"ids": {"values": ["a", "b"]}}]
    assert body["size"] == 5 and body["sort"][1] == {"ord": "asc"}


@pytest.mark.es
def test_cli_export_index_and_search_with_prefixes_from_the_engine(tmp_path, monkeypatch, engine, alias):
    """A trained toy TIGER run served twice: cold slots from ColdIndex, and from the `sid` index."""
    from sparcode.cli import main
    from test_tiger_train import write_text_dataset

    data = write_text_dataset(tmp_path, monkeypatch)
    run, export = tmp_path / "run", tmp_path / "export"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"train": {"batch_size": 4}, "tiger": {"cold_fraction": 0.34, "cold_slots": 0.5,
                                                                      # 2 codes a level: cold items share prefixes
                                                                      "rqvae": {"codes": 2, "epochs": 20}}}))
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "--model", "tiger", "--dataset", str(data), "--split", "leave-one-out",
                                   "--out", str(run), "--epochs", "1", "--quiet", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    exported = runner.invoke(main, ["export", str(run), "--out", str(export)])
    assert exported.exit_code == 0 and "cold items" in exported.output, exported.output
    env = {"ELASTICSEARCH_URL": engine.url}
    built = runner.invoke(main, ["index", str(export), "--alias", alias, "--engine", "elasticsearch"], env=env)
    assert built.exit_code == 0, built.output
    compared = 0
    for user, seen in [(f"u{u}", s) for u in range(0, 10, 2) for s in ("--keep-seen", "--exclude-seen")]:
        local = runner.invoke(main, ["search", "--run", str(run), "--user", user, "--k", "3", "--json", seen])
        served = runner.invoke(main, ["search", "--run", str(run), "--user", user, "--k", "3", "--json", seen,
                                      "--alias", alias], env=env)
        assert local.exit_code == 0 and served.exit_code == 0, served.output
        assert json.loads(served.stdout)["hits"] == json.loads(local.stdout)["hits"]
        json.loads(local.output, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
        compared += 1
    assert compared == 10
    # Not vacuous: the engine's prefix matches do change some users' lists.
    from sparcode.data.readers import load_dataset
    from sparcode.generative.train_tiger import TigerSearcher

    searcher = TigerSearcher(run, dataset=load_dataset(str(data)), device="cpu",
                             prefix_backend=SidPrefixBackend(engine, alias, expected_fingerprint=sid_fingerprint(run)))
    changed = sum(searcher.search(f"u{u}", 3, exclude_seen=False, cold_slots=0.5)
                  != searcher.search(f"u{u}", 3, exclude_seen=False, cold_slots=0.0) for u in range(10))
    for u in range(10):  # generated items by score, then the prefix-placed ones (-inf): never interleaved
        scores = [score for _, score in searcher.search(f"u{u}", 6, exclude_seen=False, cold_slots=0.5)]
        assert scores == sorted(scores, reverse=True)
    assert changed >= 1 and searcher.prefix_backend.last_bodies
    explained = runner.invoke(main, ["search", "--run", str(run), "--user", "u3", "--k", "4", "--alias", alias,
                                     "--explain"], env=env)
    assert explained.exit_code == 0 and '"dis_max"' in explained.output, explained.output
    other = runner.invoke(main, ["search", "--run", str(run), "--user", "u3", "--alias", alias + "-nope"], env=env)
    assert other.exit_code != 0 and "no index" in other.output
