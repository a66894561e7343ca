"""Index bodies built from the mapping files shipped in `sparcode.es_mappings`."""
from __future__ import annotations

import copy
import json
from importlib import resources

from sparcode.pipeline import layout
from sparcode.pipeline.export import ExportError

FIELD_TYPES = ("sparse_vector", "rank_features")
# Reserved names an export attribute may not reuse.
_CORE = {"item_id", "ord", "codes"}
DEFAULT_FIELDS_LIMIT = 1000  # index.mapping.total_fields.limit unless set


def load_template(field_type: str) -> dict:
    if field_type not in FIELD_TYPES:
        raise ValueError(f"field type {field_type!r}: expected one of {FIELD_TYPES}")
    text = resources.files("sparcode.es_mappings").joinpath(f"{field_type}.json").read_text()
    return json.loads(text)


def index_body(export, field_type: str = "sparse_vector", *, shards: int = 1, replicas: int = 0) -> dict:
    """Settings + mappings for one versioned index of `export`; loading starts with refresh off.

    `codes` is left out of `_source`: the export is the record of what was indexed (a reindex
    reads it, never the old index), and the stored copy was most of the index (200k items of
    32 codes: 88 of 134 MB). Grouped exports get one feature-map field per group (`layout`)."""
    body = copy.deepcopy(load_template(field_type))
    index_settings = body["settings"]["index"]
    index_settings.update(number_of_shards=shards, number_of_replicas=replicas, refresh_interval="-1")
    props = body["mappings"]["properties"]
    for name, kind in export.item_fields.items():
        if name in _CORE:
            # An ExportError, not a ValueError: the name comes from the export's manifest (perhaps
            # edited by hand), and `index` reports export problems as one line.
            raise ExportError(f"{export.path}/manifest.json: item field {name!r} clashes with a reserved field "
                              f"({', '.join(sorted(_CORE))}); rename it")
        props[name] = {"type": kind}
    terms = export.indexed_terms()
    term_layout, numbering = layout.placement(terms)
    if term_layout != layout.FLAT:
        groups = layout.groups(terms) if numbering is None else numbering.groups
        props["codes"] = {"properties": {group: {"type": field_type} for group in groups}}
        fields = len(props) + len(groups)
        if fields > DEFAULT_FIELDS_LIMIT:
            index_settings["mapping"] = {"total_fields": {"limit": fields}}
    body["mappings"]["_meta"] = index_meta(export, field_type, term_layout, complete=False, numbering=numbering)
    return body


def index_meta(export, field_type: str, term_layout: str, *, complete: bool,
               numbering: layout.Numbering | None = None) -> dict:
    # `complete` turns true only after the count check, so --resume can find unfinished loads.
    meta = {"fingerprint": export.fingerprint, "field_type": field_type, "layout": term_layout,
            "complete": complete, "manifest": export.summary()}
    if numbering is not None:
        meta["numbering"] = numbering.meta()
    return meta
