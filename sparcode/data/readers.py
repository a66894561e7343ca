"""Read a dataset into the dense in-memory `Dataset`: the two vendored ones by name, or any
folder/file in the generic format below.

Named datasets (under the data root, see `sparcode.data.paths`):

* ``ml-1m`` — time-ordered 5-core sequences, user features gender/age/occupation, item features
  genres (multi-valued) and release-year bucket; items indexed in ascending MovieID order.
* ``beauty`` — Amazon 2014 Beauty 5-core (S3-Rec/P5/TIGER ids), item features brand,
  category path and log-scale price bucket; items indexed in P5 id order.
* ``sports`` — Amazon 2014 Sports 5-core sequences, no features.

Generic format (``load_dataset(PATH)``)::

    PATH                 a file, or a folder holding sequences.txt / sequences.txt.gz
    sequences.txt[.gz]   one user per line: ``user_id item_id item_id ...`` separated by
                         spaces or tabs, items in time order; empty lines and lines starting
                         with ``#`` are skipped. Ids are opaque strings.
    items.tsv[.gz]       optional, next to the sequences file; one item per line:
                         ``item_id<TAB>feature=value|value<TAB>feature=value...``
    users.tsv[.gz]       optional, same layout keyed by user id.

All files are UTF-8 (plain or gzip; a byte-order mark at the start of a file is ignored). Items
get dense indices in order of first appearance in the sequences file, users in line order. Every
feature of items.tsv/users.tsv becomes a categorical (multi-valued when ``|`` separates values)
feature; item features are also item attributes (Elasticsearch type ``keyword``). A user or item
listed in a feature file but absent from the sequences, a second line for one user (or for one
id of a feature file), an empty sequence, an item id over 512 UTF-8 bytes (the search engines'
limit for a document id), a field without ``=`` or a bare carriage return inside a line
(CR-only line ends) is an error.
Items or users without a line in a feature file simply have no values for it.

Every problem with the files raises `DataError` naming the file and, where it applies, the line.
"""
from __future__ import annotations

import codecs
import gzip
import html
import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sparcode.data.dataset import CategoricalFeature, Dataset
from sparcode.data.errors import DataError
from sparcode.data.paths import dataset_file

PAD_VALUE = "<pad>"
# Exported item documents have these fields of their own (SparCode codes, two-tower vector,
# TIGER sid prefixes): a feature of the same name would overwrite them.
RESERVED_ITEM_FIELDS = frozenset({"item_id", "ord", "codes", "vector", "sid", "cold"})
# An item id becomes the document `_id`, which Elasticsearch and OpenSearch refuse over 512
# bytes: a longer one would pass train and export and fail only at `index`. (User ids never
# reach an engine: they name nothing in an index or a request.)
MAX_ITEM_ID_BYTES = 512
NAMED = ("ml-1m", "beauty", "sports")


def load_dataset(name_or_path: str | Path) -> Dataset:
    if str(name_or_path) in NAMED:
        return _NAMED_LOADERS[str(name_or_path)]()
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"no such file or folder, and not one of the named datasets {', '.join(NAMED)}", path)
    return load_generic(path)


# --- reading lines ----------------------------------------------------------------------------

def text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line without newline); decoding per line so errors know their line.

    For UTF-8 a byte-order mark at the very start of the file (as Windows editors and Excel
    write it) is dropped, like the ``utf-8-sig`` codec would; elsewhere it stays data."""
    opener = gzip.open if path.suffix == ".gz" else open
    strip_bom = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1 and strip_bom and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                line = raw.decode(encoding).rstrip("\r\n")
                if "\r" in line:  # CR-only line ends would otherwise make the whole file one line
                    raise DataError("carriage return inside a line: lines must end in LF or CRLF "
                                    "(old Mac CR-only line ends?)", path, lineno)
                yield lineno, line
    except FileNotFoundError:
        raise DataError("missing file", path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not valid {encoding} text ({err.reason} at byte {err.start})", path, lineno) from None
    except (OSError, EOFError, zlib.error) as err:  # truncated or non-gzip .gz, unreadable file
        raise DataError(f"cannot read file: {err}", path, lineno + 1) from None


def _first_line(first_lines: dict[str, int], key: str, path: Path, lineno: int, kind: str = "user") -> None:
    """Record that `key` starts line `lineno`; a second line for the same user (or item) is an
    error rather than a silent merge or overwrite.

    Callers pass the id exactly as their loader parsed it, so the check can never disagree
    with the loader about what the id is or which lines count."""
    first = first_lines.setdefault(key, lineno)
    if first != lineno:
        raise DataError(f"{kind} {key!r} appears twice, on line {first} and line {lineno}", path, lineno)


# --- categorical features ---------------------------------------------------------------------

def categorical(name: str, rows: list[list[str]]) -> CategoricalFeature:
    """Value lists per row → padded id matrix; vocab sorted so ids do not depend on row order."""
    vocab = [PAD_VALUE] + sorted({v for row in rows for v in row})
    index = {v: i for i, v in enumerate(vocab)}
    width = max(1, max((len(row) for row in rows), default=1))
    values = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        values[r, :len(row)] = [index[v] for v in row]
    return CategoricalFeature(name, values, vocab)


def price_bucket(price: float | None) -> list[str]:
    # Octave bins: prices are roughly log-normal, so equal-width bins would leave most empty.
    if price is None or not math.isfinite(price) or price <= 0:
        return []
    k = max(0, math.floor(math.log2(price)))
    return [f"{2 ** k}-{2 ** (k + 1)}"] if k else ["<2"]


def year_bucket(year: int | None) -> list[str]:
    # Five-year bins: single years would split the 1990s (most of the catalog) too finely.
    if year is None:
        return []
    if year < 1960:
        return ["<1960"]
    start = year - year % 5
    return [f"{start}-{start + 4}"]


# --- ml-1m ------------------------------------------------------------------------------------

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def load_ml1m() -> Dataset:
    seq_path = dataset_file("ml-1m", "sequences_5core_time_ordered.tsv.gz")
    user_lines: dict[str, int] = {}
    raw: list[np.ndarray] = []
    for lineno, line in text_lines(seq_path):
        if lineno == 1:
            continue  # header
        user, sep, movies = line.partition("\t")
        if not sep or not movies.strip():
            raise DataError("expected 'user_id<TAB>movie ids'", seq_path, lineno)
        try:
            raw.append(np.array(movies.split(), dtype=np.int64))
        except ValueError:
            bad = next(t for t in movies.split() if not t.lstrip("-").isdigit())
            raise DataError(f"movie id {bad!r} is not an integer", seq_path, lineno) from None
        _first_line(user_lines, user.strip(), seq_path, lineno)
    user_ids = list(user_lines)
    movies_sorted = np.unique(np.concatenate(raw))
    sequences = [np.searchsorted(movies_sorted, s) for s in raw]

    users = _read_ml1m_users(dataset_file("ml-1m", "users.dat"))
    movies = _read_ml1m_movies(dataset_file("ml-1m", "movies.dat"))
    item_ids = [str(m) for m in movies_sorted]
    missing = [m for m in item_ids if m not in movies]
    if missing:
        raise DataError(f"{len(missing)} movies of the sequences are not in movies.dat, e.g. {missing[0]}",
                        dataset_file("ml-1m", "movies.dat"))
    user_rows = [users.get(u, ("", "", "")) for u in user_ids]
    user_features = [categorical(name, [[row[i]] if row[i] else [] for row in user_rows])
                     for i, name in enumerate(("gender", "age", "occupation"))]
    attributes = [{"title": movies[m][0], "genres": movies[m][1], "year": movies[m][2]} for m in item_ids]
    item_features = [categorical("genres", [a["genres"] for a in attributes]),
                     categorical("year", [year_bucket(a["year"]) for a in attributes])]
    return Dataset("ml-1m", user_ids, item_ids, sequences, item_features, user_features, attributes,
                   {"title": "text", "genres": "keyword", "year": "integer"})


def _read_ml1m_users(path: Path) -> dict[str, tuple[str, str, str]]:
    users = {}
    for lineno, line in text_lines(path):
        fields = line.split("::")
        if len(fields) != 5:
            raise DataError("expected UserID::Gender::Age::Occupation::Zip-code", path, lineno)
        users[fields[0]] = (fields[1], fields[2], fields[3])
    return users


def _read_ml1m_movies(path: Path) -> dict[str, tuple[str, list[str], int | None]]:
    movies = {}
    for lineno, line in text_lines(path, encoding="latin-1"):
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError("expected MovieID::Title::Genres", path, lineno)
        movie, title, genres = fields
        year = _YEAR.search(title)
        movies[movie] = (title, [g for g in genres.split("|") if g], int(year.group(1)) if year else None)
    return movies


# --- Amazon -----------------------------------------------------------------------------------

def _read_numbered_sequences(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """`user item item ...` with integer ids (S3-Rec/P5 files)."""
    user_lines: dict[str, int] = {}
    sequences = []
    for lineno, line in text_lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise DataError("expected 'user_id item_id ...' with at least one item", path, lineno)
        try:
            sequences.append(np.array(fields[1:], dtype=np.int64))
        except ValueError:
            bad = next(t for t in fields[1:] if not t.isdigit())
            raise DataError(f"item id {bad!r} is not an integer", path, lineno) from None
        _first_line(user_lines, fields[0], path, lineno)
    return list(user_lines), sequences


def _load_amazon(folder: str, name: str) -> tuple[Dataset, np.ndarray]:
    seq_path = dataset_file(folder, "sequential_data.txt.gz")
    user_ids, raw = _read_numbered_sequences(seq_path)
    ids = np.unique(np.concatenate(raw))
    dataset = Dataset(name, user_ids, [str(i) for i in ids], [np.searchsorted(ids, s) for s in raw])
    return dataset, ids


def load_beauty() -> Dataset:
    dataset, ids = _load_amazon("amazon-beauty", "beauty")
    meta_path = dataset_file("amazon-beauty", "items.jsonl.gz")
    meta: dict[int, dict] = {}
    for lineno, line in text_lines(meta_path):
        try:
            record = json.loads(line)
            meta[int(record["item_id"])] = record
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"bad item record: {err}", meta_path, lineno) from None
    attributes = []
    for item in ids.tolist():
        record = meta.get(item, {})
        title, brand = record.get("title"), record.get("brand")
        attributes.append({
            "title": html.unescape(title) if title else None,
            "brand": html.unescape(brand) if brand else None,
            "categories": [html.unescape(c) for c in record.get("categories") or []],
            "price": record.get("price"),
            "asin": record.get("asin"),
        })
    dataset.item_attributes = attributes
    dataset.item_attribute_types = {"title": "text", "brand": "keyword", "categories": "keyword",
                                    "price": "float", "asin": "keyword"}
    dataset.item_features = [
        categorical("brand", [[a["brand"]] if a["brand"] else [] for a in attributes]),
        categorical("categories", [category_paths(a["categories"]) for a in attributes]),
        categorical("price", [price_bucket(a["price"]) for a in attributes]),
    ]
    return dataset


def category_paths(path: list[str]) -> list[str]:
    """Every prefix of the category path, so siblings share their parents' values
    ("Beauty > Makeup" for nail polish and lipstick) and the full path names the leaf."""
    return [" > ".join(path[:depth]) for depth in range(1, len(path) + 1)]


def load_sports() -> Dataset:
    return _load_amazon("amazon-sports", "sports")[0]


_NAMED_LOADERS = {"ml-1m": load_ml1m, "beauty": load_beauty, "sports": load_sports}


# --- generic ----------------------------------------------------------------------------------

def _sibling(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `folder`; both present is refused, since a stale copy of either
    would be read without a word."""
    found = [folder / name for name in (stem, stem + ".gz") if (folder / name).exists()]
    if len(found) == 2:
        raise DataError(f"holds both {stem} and {stem}.gz; keep the one to read", folder)
    if found and not found[0].is_file():
        raise DataError(f"{found[0].name} is not a file", folder)
    return found[0] if found else None


# Generic files separate fields by spaces or tabs only: str.split() would also cut an id at a
# no-break space or a Unicode line separator, which ids copied from titles do contain.
_GENERIC_FIELDS = re.compile(r"[ \t]+")


def _generic_fields(line: str) -> list[str]:
    return [field for field in _GENERIC_FIELDS.split(line.strip(" \t\r\n")) if field]


def _check_item_ids(ids: list[str], path: Path, lineno: int) -> None:
    # A character is at most 4 UTF-8 bytes, so almost every line is cleared without encoding an id.
    if max(map(len, ids)) * 4 <= MAX_ITEM_ID_BYTES:
        return
    for item in ids:
        size = len(item.encode("utf-8"))
        if size > MAX_ITEM_ID_BYTES:
            raise DataError(f"item id {item[:40]!r}… is {size} UTF-8 bytes; an item id becomes the search "
                            f"engine's document id, which may be at most {MAX_ITEM_ID_BYTES} bytes", path, lineno)


def load_generic(path: Path) -> Dataset:
    if path.is_dir():
        seq_path = _sibling(path, "sequences.txt")
        if seq_path is None:
            raise DataError("folder has no sequences.txt or sequences.txt.gz", path)
    else:
        seq_path = path
    user_lines: dict[str, int] = {}
    item_index: dict[str, int] = {}
    sequences = []
    for lineno, line in text_lines(seq_path):
        fields = _generic_fields(line)
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise DataError(f"user {fields[0]!r} has no items (expected 'user_id item_id ...')", seq_path, lineno)
        _first_line(user_lines, fields[0], seq_path, lineno)
        _check_item_ids(fields[1:], seq_path, lineno)
        sequences.append(np.fromiter((item_index.setdefault(t, len(item_index)) for t in fields[1:]),
                                     dtype=np.int64, count=len(fields) - 1))
    if not user_lines:
        raise DataError("no user lines", seq_path)
    user_ids = list(user_lines)
    item_ids = list(item_index)
    name = str(path)  # as given: messages then name the dataset the user typed (never one of NAMED)
    dataset = Dataset(name, user_ids, item_ids, sequences)
    items_path = _sibling(seq_path.parent, "items.tsv")
    if items_path is not None:
        features, rows = _read_feature_file(items_path, item_index, "item")
        dataset.item_features = features
        dataset.item_attributes = rows
        dataset.item_attribute_types = {f.name: "keyword" for f in features}
    users_path = _sibling(seq_path.parent, "users.tsv")
    if users_path is not None:
        dataset.user_features = _read_feature_file(users_path, {u: i for i, u in enumerate(user_ids)}, "user")[0]
    return dataset


def _read_feature_file(path: Path, index: dict[str, int], kind: str) -> tuple[list[CategoricalFeature], list[dict]]:
    rows: list[dict[str, list[str]]] = [{} for _ in index]
    names: dict[str, None] = {}  # insertion-ordered set: features keep their file order
    first_lines: dict[str, int] = {}
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        key, *fields = line.split("\t")
        if key not in index:
            hint = " (fields are separated by TABs, not spaces)" if " " in key and "=" in key else ""
            raise DataError(f"{kind} id {key!r} does not occur in the sequences{hint}", path, lineno)
        _first_line(first_lines, key, path, lineno, kind)
        for field in fields:
            if not field.strip():
                continue  # an empty field: the trailing TAB many TSV writers leave
            feature, sep, values = field.partition("=")
            feature = feature.strip()
            if not sep or not feature:
                raise DataError(f"expected 'feature=value|value', got {field!r}", path, lineno)
            if kind == "item" and "." in feature:
                raise DataError(f"item feature name {feature!r} contains '.', which the search engines read as an "
                                "object path; rename it", path, lineno)
            if kind == "item" and (feature in RESERVED_ITEM_FIELDS or feature.startswith("_")):
                raise DataError(f"item feature name {feature!r} is reserved (each indexed item document has "
                                f"{', '.join(sorted(RESERVED_ITEM_FIELDS))}, and names starting with '_' are "
                                "the search engine's); rename it", path, lineno)
            if feature in rows[index[key]]:
                raise DataError(f"feature {feature!r} appears twice on this line; give several values as "
                                f"{feature}=a|b", path, lineno)
            names.setdefault(feature)
            # Stray spaces around a value would make `--filter genre=Comedy` silently miss "Comedy ".
            rows[index[key]][feature] = [v.strip() for v in values.split("|") if v.strip()]
    features = [categorical(f, [row.get(f, []) for row in rows]) for f in names]
    return features, [{f: row.get(f, []) for f in names} for row in rows]
