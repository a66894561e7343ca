"""Index bodies built from the mapping files shipped in `sparcode.es_mappings`."""
from __future__ import annotations

import copy
import json
from importlib import resources

FIELD_TYPES = ("sparse_vector", "rank_features")
# Reserved names an export attribute may not reuse.
_CORE = {"item_id", "ord", "codes"}


def load_template(field_type: str) -> dict:
    if field_type not in FIELD_TYPES:
        raise ValueError(f"field type {field_type!r}: expected one of {FIELD_TYPES}")
    text = resources.files("sparcode.es_mappings").joinpath(f"{field_type}.json").read_text()
    return json.loads(text)


def index_body(export, field_type: str = "sparse_vector", *, shards: int = 1, replicas: int = 0) -> dict:
    """Settings + mappings for one versioned index of `export`; loading starts with refresh off."""
    body = copy.deepcopy(load_template(field_type))
    index_settings = body["settings"]["index"]
    index_settings.update(number_of_shards=shards, number_of_replicas=replicas, refresh_interval="-1")
    props = body["mappings"]["properties"]
    for name, kind in export.item_fields.items():
        if name in _CORE:
            raise ValueError(f"item field {name!r} clashes with a reserved field")
        props[name] = {"type": kind}
    body["mappings"]["_meta"] = index_meta(export, field_type, complete=False)
    return body


def index_meta(export, field_type: str, *, complete: bool) -> dict:
    # `complete` turns true only after the count check, so --resume can find unfinished loads.
    return {"fingerprint": export.fingerprint, "field_type": field_type, "complete": complete,
            "manifest": export.summary()}
