"""`sparcode index` / `reindex` fixes against the live Elasticsearch node: bad two-tower vectors
refused before any index exists, --resume of another export's unfinished load, an unfinished
index opened by name, a reserved item field, and a SparCode model swapped onto an alias that
served two-tower vectors."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FINGERPRINT, ITEM_FIELDS, random_items, write_export
from sparcode.cli import main
from sparcode.pipeline import indexer, knn, mappings
from sparcode.pipeline.backends import BackendError, EngineBackend
from sparcode.pipeline.export import Export
from sparcode.pipeline.indexer import IndexProblem
from sparcode.pipeline.vectors import write_vector_export

pytestmark = pytest.mark.es
ENGINE = "elasticsearch"


def cli(engine, *args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--url", engine.url])


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    rng = np.random.default_rng(0)
    return write_vector_export(tmp_path_factory.mktemp("vectors"), rng.standard_normal((60, 8)),
                               fingerprint="cd" * 32)


def spoiled_vectors(source, target, change):
    shutil.copytree(source, target)
    np.save(target / "vectors.npy", change(np.load(target / "vectors.npy")), allow_pickle=False)
    return target


def with_nan(v):
    v = v.copy()
    v[5, 3] = np.nan
    return v


@pytest.mark.parametrize("change, fragment", [(lambda v: v[:-1], "manifest says float32(60, 8)"),
                                              (with_nan, "non-finite values")])
def test_bad_vectors_are_refused_before_any_index_exists(engine, alias, vectors, tmp_path, change, fragment):
    bad = spoiled_vectors(vectors, tmp_path / "bad", change)
    one_line_error(cli(engine, "index", bad, "--alias", alias), fragment)
    assert not engine.matching(f"{alias}*")


def two_exports(tmp_path):
    """Two exports of one model (same fingerprint), e.g. two stored fractions: other postings."""
    full = write_export(tmp_path / "full", random_items())
    small = write_export(tmp_path / "small", random_items(seed=3))
    edited = json.loads((small / "manifest.json").read_text())
    (small / "manifest.json").write_text(json.dumps({**edited, "created": "2026-11-23T08:00:00Z"}))
    return Export.open(full), Export.open(small)


def unfinished_index(engine, alias, export):
    """What a load killed right after creating its index leaves: complete false, no documents."""
    name = indexer.versioned_name(alias, export.fingerprint)
    indexer._create(engine, name, mappings.index_body(export), "sparse_vector")
    return name


def test_resume_refuses_an_unfinished_load_of_another_export(engine, alias, tmp_path):
    full, small = two_exports(tmp_path)
    name = unfinished_index(engine, alias, small)
    with pytest.raises(IndexProblem, match=f"{name} was started from another export of this model.*"
                                           "rebuild without --resume"):
        indexer.build(engine, full, alias, resume=True, progress=False)
    assert engine.count(name) == 0 and not engine.alias_exists(alias)
    # Its own export resumes it.
    result = indexer.build(engine, small, alias, resume=True, progress=False)
    assert result.resumed and result.index == name and result.docs == small.n_items


def test_an_unfinished_index_is_not_served_by_name(engine, alias, tmp_path):
    full, _ = two_exports(tmp_path)
    name = unfinished_index(engine, alias, full)
    with pytest.raises(BackendError, match=f"{name} is an unfinished load"):
        EngineBackend(engine, name, expected_fingerprint=FINGERPRINT)


def test_a_reserved_item_field_name_is_one_line(engine, alias, tmp_path):
    export = write_export(tmp_path / "fcodes", random_items(), item_fields={**ITEM_FIELDS, "codes": "keyword"})
    one_line_error(cli(engine, "index", export, "--alias", alias), "item field 'codes' clashes with a reserved field")
    assert not engine.matching(f"{alias}*")


def test_reindex_moves_an_alias_from_two_tower_vectors_to_sparcode_codes(engine, alias, vectors, export_dir):
    knn.build(engine, vectors, alias, progress=False)
    result = cli(engine, "reindex", export_dir, "--alias", alias)
    assert result.exit_code == 0, result.output
    served = next(iter(engine.mappings(alias).values()))
    assert served["_meta"]["field_type"] == "sparse_vector" and "vector" not in served["properties"]
