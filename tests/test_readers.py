"""Readers: the vendored datasets' published counts, the generic format, and clean errors."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from sparcode.data import paths
from sparcode.data.errors import DataError
from sparcode.data.readers import category_paths, load_dataset, price_bucket


@pytest.fixture(scope="module")
def ml1m():
    return load_dataset("ml-1m")


def test_ml1m_counts_and_order(ml1m):
    assert (ml1m.n_users, ml1m.n_items) == (6040, 3416)
    assert sum(len(s) for s in ml1m.sequences) == 999_611
    ids = [int(i) for i in ml1m.item_ids]
    assert ids == sorted(ids)  # indices follow MovieID order
    assert ml1m.user_ids[0] == "1" and int(ml1m.item_ids[ml1m.sequences[0][0]]) == 3186
    assert all(s.dtype == np.int64 for s in ml1m.sequences)


def test_ml1m_features_and_latin1_titles(ml1m):
    attrs = {a["title"]: a for a in ml1m.item_attributes}
    # movies.dat is latin-1: "Misérables" must decode to é, not mojibake.
    les_mis = attrs["Misérables, Les (1995)"]
    assert les_mis["year"] == 1995 and les_mis["genres"] == ["Drama", "Musical"]
    toy = ml1m.item_attributes[ml1m.item_ids.index("1")]
    assert toy == {"title": "Toy Story (1995)", "genres": ["Animation", "Children's", "Comedy"], "year": 1995}
    genres = next(f for f in ml1m.item_features if f.name == "genres")
    row = genres.values[ml1m.item_ids.index("1")]
    assert [genres.vocab[v] for v in row if v] == ["Animation", "Children's", "Comedy"]
    assert {f.name for f in ml1m.user_features} == {"gender", "age", "occupation"}
    for f in ml1m.user_features + ml1m.item_features:
        assert f.vocab[0] == "<pad>" and f.values.max() < f.vocab_size
        assert len(f.values) == (ml1m.n_users if f in ml1m.user_features else ml1m.n_items)
    gender = next(f for f in ml1m.user_features if f.name == "gender")
    assert gender.vocab[gender.values[0, 0]] == "F"  # users.dat: 1::F::1::10::48067


def test_beauty_counts_and_attributes():
    beauty = load_dataset("beauty")
    assert (beauty.n_users, beauty.n_items) == (22363, 12101)
    assert sum(len(s) for s in beauty.sequences) == 198_502
    assert beauty.item_ids[:3] == ["1", "2", "3"] and beauty.user_features == []
    first = beauty.item_attributes[0]
    assert first["brand"] == "OPI" and first["price"] == 12.0
    assert first["categories"] == ["Beauty", "Makeup", "Nails", "Nail Polish"]
    assert not any("&amp;" in (a["title"] or "") for a in beauty.item_attributes)
    assert {f.name for f in beauty.item_features} == {"brand", "categories", "price"}


def test_feature_helpers():
    assert category_paths(["A", "B", "C"]) == ["A", "A > B", "A > B > C"]
    assert price_bucket(12.0) == ["8-16"] and price_bucket(1.5) == ["<2"] and price_bucket(None) == []


def write(path, text, compress=False):
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_generic_round_trip(tmp_path):
    write(tmp_path / "sequences.txt.gz", "# comment\nu1 b a c\n\nu2 c\tb d\n", compress=True)
    write(tmp_path / "items.tsv", "a\tcolor=red|blue\tsize=L\nd\tcolor=green\n")
    write(tmp_path / "users.tsv", "u2\tcountry=fr\n")
    ds = load_dataset(tmp_path)
    assert ds.user_ids == ["u1", "u2"]
    assert ds.item_ids == ["b", "a", "c", "d"]  # order of first appearance
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [2, 0, 3]]
    color = ds.item_features[0]
    assert color.name == "color" and color.vocab == ["<pad>", "blue", "green", "red"]
    assert color.values.tolist() == [[0, 0], [3, 1], [0, 0], [2, 0]]
    assert ds.item_attributes[1] == {"color": ["red", "blue"], "size": ["L"]}
    assert ds.item_attribute_types == {"color": "keyword", "size": "keyword"}
    assert ds.user_features[0].values.tolist() == [[0], [1]]
    # The sequences file alone, given directly, reads the same interactions.
    same = load_dataset(tmp_path / "sequences.txt.gz")
    assert [s.tolist() for s in same.sequences] == [s.tolist() for s in ds.sequences]


@pytest.mark.parametrize("files, message, line", [
    ({"sequences.txt": "u1 a b\nu2\n"}, "has no items", 2),
    ({"sequences.txt": "u1 a\nu1 b\n"}, "appears twice", 2),
    ({"sequences.txt": "u1 a\n", "items.tsv": "a\tcolor=red\nzz\tcolor=blue\n"}, "does not occur", 2),
    ({"sequences.txt": "u1 a\n", "items.tsv": "a\tcolor\n"}, "feature=value", 1),
])
def test_generic_errors_name_file_and_line(tmp_path, files, message, line):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert message in str(err.value) and f"line {line}" in str(err.value)
    assert err.value.line == line


def test_bad_encoding_and_broken_gzip(tmp_path):
    (tmp_path / "sequences.txt").write_bytes(b"u1 a\nu2 caf\xe9\n")
    with pytest.raises(DataError, match=r"sequences.txt, line 2: not valid utf-8"):
        load_dataset(tmp_path / "sequences.txt")
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="broken.txt.gz.*cannot read"):
        load_dataset(tmp_path / "broken.txt.gz")


def test_missing_inputs(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not one of the named datasets"):
        load_dataset(tmp_path / "nope.txt")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(DataError, match="SPARCODE_DATA") as err:
        load_dataset("ml-1m")
    assert str(tmp_path / "absent") in str(err.value)
    (tmp_path / "ml-1m").mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match="sequences_5core_time_ordered.tsv.gz"):
        load_dataset("ml-1m")


def test_ml1m_malformed_line_names_file_and_line(tmp_path, monkeypatch):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    with gzip.open(folder / "sequences_5core_time_ordered.tsv.gz", "wt") as fh:
        fh.write("user_id\tmovie_ids\n1\t1 2\n2\t3 x4\n")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match=r"sequences_5core_time_ordered.tsv.gz, line 3: movie id 'x4'"):
        load_dataset("ml-1m")
