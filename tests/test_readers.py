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


def test_feature_files_forgive_trailing_tabs_and_spaces_around_values(tmp_path):
    # Many TSV writers end lines with a TAB; a value "Comedy " would silently miss --filter genre=Comedy.
    write(tmp_path / "sequences.txt", "u1 a b\nu2 b a\n")
    write(tmp_path / "items.tsv", "a\tgenre=Comedy |Drama\t\nb\t genre = Horror\t\t\n")
    ds = load_dataset(tmp_path)
    assert ds.item_attributes == [{"genre": ["Comedy", "Drama"]}, {"genre": ["Horror"]}]
    # A generic dataset is named as given, so messages name the folder, not "sequences".
    assert ds.name == str(tmp_path) and load_dataset(tmp_path / "sequences.txt").name == str(tmp_path / "sequences.txt")


@pytest.mark.parametrize("files, message, line", [
    ({"sequences.txt": "u1 a b\nu2\n"}, "has no items", 2),
    ({"sequences.txt": "u1 a\nu1 b\n"}, "appears twice", 2),
    ({"sequences.txt": "u1 a\n", "items.tsv": "a\tcolor=red\nzz\tcolor=blue\n"}, "does not occur", 2),
    ({"sequences.txt": "u1 a\n", "items.tsv": "a\tcolor\n"}, "feature=value", 1),
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\tcolor=red\nb\tcolor=red\na\tcolor=blue\n"},
     "item 'a' appears twice, on line 1 and line 3", 3),
    ({"sequences.txt": "u1 a\n", "users.tsv": "u1 age=3\n"}, "separated by TABs, not spaces", 1),
    ({"sequences.txt": "u1 a b\ru2 b c\r"}, "carriage return inside a line", 1),
    ({"sequences.txt": "u1 a b\r\nu2 b c\nu3 c\rd\n"}, "carriage return inside a line", 3),
    # A feature named like a field every exported item document has would overwrite it.
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\tcolor=red\nb\tord=o1\n"}, "'ord' is reserved", 2),
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\tcodes=x\n"}, "'codes' is reserved", 1),
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\t_id=x\n"}, "'_id' is reserved", 1),
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\tcodes.c0001=x\n"}, "'codes.c0001' contains '.'", 1),
    ({"sequences.txt": "u1 a b\n", "items.tsv": "a\tgenre=Drama\tgenre=Comedy\n"},
     "'genre' appears twice on this line; give several values as genre=a|b", 1),
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


# The duplicate-user check sees the users exactly as the loader does: same tokens, same skipped
# lines, and the message names the real user and both real line numbers.
@pytest.mark.parametrize("text, user, first, again", [
    (" u1 a\nu2 b\nu1 c\n", "u1", 1, 3),             # leading space on the first line
    ("u1 a\n\nu2 b\n\nu1 c\n", "u1", 1, 5),           # blank lines
    ("# one\nu1 a\n# two\nu1 b\n", "u1", 2, 4),       # comment lines
    ("  u1 a\n\tu2 b\n  u2 c\n", "u2", 2, 3),         # leading spaces and tabs
    ("u1\ta b\nu2 c\nu1  d\n", "u1", 1, 3),           # tab vs. double space after the id
])
@pytest.mark.parametrize("compress", [False, True])
def test_duplicate_user_names_real_user_and_lines(tmp_path, text, user, first, again, compress):
    path = write(tmp_path / ("sequences.txt.gz" if compress else "sequences.txt"), text, compress)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert f"user {user!r} appears twice" in message
    assert f"line {first}" in message and f"line {again}" in message
    assert err.value.line == again and err.value.path == path


def test_leading_whitespace_is_not_a_duplicate(tmp_path):
    ds = load_dataset(write(tmp_path / "sequences.txt", " u1 a\n\n# c\n\tu2 b\n"))
    assert ds.user_ids == ["u1", "u2"]


BOM = "\ufeff"


@pytest.mark.parametrize("compress", [False, True])
def test_utf8_bom_is_stripped_from_every_file(tmp_path, compress):
    gz = ".gz" if compress else ""
    write(tmp_path / f"sequences.txt{gz}", BOM + "1 a b\n2 b c\n", compress)
    write(tmp_path / f"items.tsv{gz}", BOM + "a\tcolor=red\n", compress)
    write(tmp_path / f"users.tsv{gz}", BOM + "1\tcountry=fr\n", compress)
    ds = load_dataset(tmp_path)
    assert ds.user_ids == ["1", "2"] and ds.item_ids == ["a", "b", "c"]
    assert ds.item_attributes[0] == {"color": ["red"]}
    country = ds.user_features[0]
    assert [country.vocab[v] for v in country.values[:, 0]] == ["fr", "<pad>"]


def test_utf8_bom_before_a_comment_line(tmp_path):
    write(tmp_path / "sequences.txt", BOM + "# header\n1 a\n")
    write(tmp_path / "items.tsv", BOM + "# header\na\tcolor=red\n")
    ds = load_dataset(tmp_path)
    assert ds.user_ids == ["1"] and ds.item_attributes[0] == {"color": ["red"]}


def test_bom_user_is_the_same_user_later(tmp_path):
    # "\ufeffu1" on line 1 and "u1" on line 3 are one user; the BOM does not shift line numbers.
    write(tmp_path / "sequences.txt", BOM + "u1 a\nu2 b\nu1 c\n")
    with pytest.raises(DataError, match=r"line 3: user 'u1' appears twice"):
        load_dataset(tmp_path)


def test_user_features_may_use_the_item_documents_field_names(tmp_path):
    write(tmp_path / "sequences.txt", "u1 a b\n")
    write(tmp_path / "users.tsv", "u1\tord=first\n")  # users are never indexed as documents
    assert load_dataset(tmp_path).user_features[0].name == "ord"


@pytest.mark.parametrize("stem", ["sequences.txt", "items.tsv"])
def test_a_file_present_plain_and_gzipped_is_refused_naming_both(tmp_path, stem):
    write(tmp_path / "sequences.txt", "u1 a b\n")
    write(tmp_path / "items.tsv", "a\tcolor=red\n")
    write(tmp_path / f"{stem}.gz", "u1 a b c\n" if stem == "sequences.txt" else "a\tcolor=blue\n", compress=True)
    with pytest.raises(DataError, match=rf"holds both {stem} and {stem}.gz"):
        load_dataset(tmp_path)


def test_a_folder_named_like_the_sequences_file_is_named_as_such(tmp_path):
    (tmp_path / "sequences.txt").mkdir()
    with pytest.raises(DataError, match="sequences.txt is not a file"):
        load_dataset(tmp_path)


def test_ids_are_cut_at_spaces_and_tabs_only(tmp_path):
    write(tmp_path / "sequences.txt", "u1 Star\u00a0Wars\tb  c\u2028d\n")
    assert load_dataset(tmp_path).item_ids == ["Star\u00a0Wars", "b", "c\u2028d"]


def test_an_item_id_longer_than_an_engine_document_id_is_refused_naming_file_and_line(tmp_path):
    # 512 UTF-8 bytes is the engines' `_id` limit: 256 two-byte characters pass, one byte more does
    # not, though it is only 257 characters. A user id never becomes a document id: any length.
    fits, too_long = "é" * 256, "a" + "é" * 256
    write(tmp_path / "sequences.txt", f"{'u' * 600} a {fits}\nu2 b {too_long} c\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert err.value.line == 2 and "sequences.txt, line 2" in str(err.value)
    assert "513 UTF-8 bytes" in str(err.value) and "at most 512 bytes" in str(err.value)
    write(tmp_path / "sequences.txt", f"{'u' * 600} a {fits}\nu2 b c\n")
    assert load_dataset(tmp_path).item_ids == ["a", fits, "b", "c"]
