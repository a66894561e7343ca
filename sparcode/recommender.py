"""A trained SparCode run behind its export's index, for a program: open once, then turn each
request's user (an id, or a fresh history of item ids) into the query the index is searched
with, and search it.

This is what `sparcode search` does for a SparCode run, as a library: the same query (the
export's query probes, not the run config's), the same refusal of another model's export, and
errors that are all `SparcodeError`s. It bridges both sides, like `sparcode.commands`: the model
(`sparcode.encoder`, torch) and the backends reading the export (`sparcode.pipeline`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sparcode.encoder import users
from sparcode.encoder.runs import Run, RunError, open_run
from sparcode.encoder.serving import user_queries
from sparcode.encoder.users import UnknownItems, UnknownUser
from sparcode.pipeline.backends import Hit, open_backend
from sparcode.pipeline.connect import ENGINES
from sparcode.pipeline.export import Export
from sparcode.pipeline.query import coerce_filters

__all__ = ["Hit", "Query", "Recommender", "RecommenderError", "UnknownItems", "UnknownUser"]

UNKNOWN_ITEMS = ("error", "ignore")


class RecommenderError(RunError):
    """A run that cannot be served as asked: no export, another model's export, a model kind
    served elsewhere, a malformed request. A RunError, so every command reports it in one line."""


@dataclass(frozen=True)
class Query:
    """One user as the index sees them."""

    terms: dict[str, float]  # pseudo-term → boost (how many of the user's token probes land on it)
    seen: tuple[str, ...]  # the items the user has: excluded from results unless asked otherwise
    user: str | None  # the known user whose profile features were used; None: the profile-less row
    row: int  # the model's user row (a known user's index, or n_users for a history alone)
    ignored: tuple[str, ...] = ()  # history items left out as unknown (unknown_items="ignore")


class Serving(NamedTuple):
    backend: object
    query_probes: int  # what the export was made with: its index is queried that way


def resolve_export(run_dir: Path, export_dir: Path | None = None) -> Path:
    """`export_dir`, else the run's last complete export (recorded by `sparcode export`)."""
    if export_dir is not None:
        return Path(export_dir)
    record = Path(run_dir) / "last_export.json"
    if record.exists():
        try:
            return Path(json.loads(record.read_text())["path"])
        except (ValueError, KeyError, TypeError):  # ValueError covers bad JSON and bad UTF-8
            raise RecommenderError(f"{record} is damaged; pass --export DIR, or export again") from None
    raise RecommenderError(f"no export for {run_dir}: run `sparcode export {run_dir} --out DIR` or pass --export DIR")


def check_same_model(export: Path, exported: str, run_dir: Path, expected: str) -> None:
    """An export of another model spells users in codes this model does not produce."""
    if exported != expected:
        raise RecommenderError(
            f"{export} was exported from another model (fingerprint {exported[:12]}, run {run_dir} is "
            f"{expected[:12]}); re-export with `sparcode export {run_dir} --out DIR`")


def open_serving(run: Run, export_dir: Path | None = None, *, alias: str | None = None, engine: str | None = None,
                 url: str | None = None, connection=None, request_timeout: float | None = None,
                 retries: int | None = None) -> Serving:
    """The backend serving `run`'s export (in process without `alias`, else the index behind
    `alias` on the node; the other arguments are `open_backend`'s), and the query probes that
    export was made with: an index built with `export --query-probes` is queried that way
    whatever the run's config says."""
    export = resolve_export(run.path, export_dir)
    opened = Export.open(export)
    check_same_model(export, opened.fingerprint, run.path, run.fingerprint())
    probes = opened.query_probes or run.config.serve.query_probes
    # The backend reads this opening of the export, and checks its files are still the ones the
    # model check and these probes were made from (an `export --force` may swap the folder).
    if alias is None:
        return Serving(open_backend(export_dir=opened), probes)
    return Serving(open_backend(alias=alias, export_dir=opened, engine=engine, connection=connection, url=url,
                                request_timeout=request_timeout, retries=retries), probes)


def check_servable(run: Run) -> None:
    """Only a SparCode run turns a user into a term query; name what serves the others."""
    elsewhere = {
        "two-tower": "its user vectors are served by `sparcode search --backend hnsw|es-knn|exact` "
                     "(sparcode.pipeline.hnsw, .knn and .vectors)",
        "tiger": "it generates items by constrained beam search: `sparcode search --backend tiger` "
                 "(sparcode.generative.train_tiger.TigerSearcher)",
    }.get(run.kind, "it has no index to serve; `sparcode evaluate` scores it")
    if run.kind != "sparcode":
        raise RecommenderError(f"Recommender serves SparCode runs; {run.path} was trained with --model {run.kind}: "
                               f"{elsewhere}")


class Recommender:
    """A SparCode run's model and its export's backend, opened once and shared by every request.

    `query`, `search` and `body` take a known `user` id, a `history` of item ids (oldest
    first), or both: the known user's profile features with this history in place of the
    recorded one (which is also what `seen` then holds)."""

    def __init__(self, run: Run, model, device, serving: Serving):
        self.run, self._model, self._device = run, model, device
        self.backend, self.query_probes = serving

    @classmethod
    def open(cls, run_dir, export_dir=None, *, alias: str | None = None, engine: str | None = None,
             url: str | None = None, connection=None, request_timeout: float | None = None,
             retries: int | None = None) -> "Recommender":
        """Serve `run_dir` from `export_dir` (default: the run's last export): in process, or with
        `alias` from that index on a node. The node's settings are `open_backend`'s: `engine`
        ("elasticsearch", "opensearch"; None asks the node), `url` or `connection` (else the
        environment names the node), `request_timeout`, `retries`."""
        return cls.from_run(open_run(Path(run_dir)), export_dir, alias=alias, engine=engine, url=url,
                            connection=connection, request_timeout=request_timeout, retries=retries)

    @classmethod
    def from_run(cls, run: Run, export_dir=None, *, alias: str | None = None, **node) -> "Recommender":
        """`open` for a run already opened (`sparcode.encoder.runs.open_run`); `node` as there."""
        check_servable(run)
        given = [name for name, value in node.items() if value is not None]
        if alias is None and given:
            # Ignored, they would let the caller believe the node was searched.
            raise RecommenderError(f"{', '.join(given)} choose the node holding alias; give alias=NAME, "
                                   "or leave them out to serve the export in this process")
        if node.get("engine") not in (None, *ENGINES):
            raise RecommenderError(f"engine is one of {', '.join(ENGINES)}, or None to ask the node; not "
                                   f"{node['engine']!r}")
        serving = open_serving(run, None if export_dir is None else Path(export_dir), alias=alias, **node)
        model, device = run.load_model()
        return cls(run, model, device, serving)

    def query(self, user: str | None = None, history: Sequence[str] | None = None, *,
              unknown_items: str = "error") -> Query:
        """The user's query. `unknown_items="ignore"` leaves history items the run does not know
        out (listed in `Query.ignored`); a history with no known item is refused either way."""
        if unknown_items not in UNKNOWN_ITEMS:
            raise RecommenderError(f"unknown_items must be one of {', '.join(UNKNOWN_ITEMS)}, not {unknown_items!r}")
        if user is None and history is None:
            raise RecommenderError("give user=ID, history=[ITEM, …], or both (the user's profile with that history)")
        user = None if user is None else str(user)
        if history is None:
            row, padded, seen = users.user_history(self.run, user)
            ignored = []
        else:
            history, ignored = self._known(_item_ids(history), unknown_items)
            row, padded, seen = users.items_history(self.run, history, user)
        terms = user_queries(self._model, np.asarray([row]), padded[None, :], self._device, self.backend.code_table,
                             self.query_probes)[0]
        return Query(terms, tuple(seen), user, int(row), tuple(ignored))

    def search(self, user: str | None = None, history: Sequence[str] | None = None, k: int = 10,
               filters: Mapping[str, object] | None = None, exclude_seen: bool = True, *,
               unknown_items: str = "error", query: Query | None = None) -> list[Hit]:
        """The top `k` items, best first. `filters` is `{field: value or [values]}` (values of a
        field are alternatives, fields must all match); `query` reuses one already computed. Fewer
        than `k` come back when fewer items have a stored score for the user's codes."""
        asked = self._asked(query, user, history, unknown_items)
        exclude = asked.seen if _flag(exclude_seen) else None
        hits = self.backend.search(asked.terms, k, filters, exclude)
        if filters and len(hits) < k:  # a filter no item can match is an error, not []
            check_matchable(self.run.dataset, coerce_filters(filters, self.run.dataset.item_attribute_types or {}),
                            self._catalog)
        return hits

    def body(self, user: str | None = None, history: Sequence[str] | None = None, k: int = 10,
             filters: Mapping[str, object] | None = None, exclude_seen: bool = True, *,
             unknown_items: str = "error", query: Query | None = None) -> dict:
        """The request body `search` sends to `POST /<alias>/_search` (`sparcode search
        --explain`); served in process, the body an Elasticsearch index of the export is sent."""
        asked = self._asked(query, user, history, unknown_items)
        return self.backend.explain(asked.terms, k, filters, asked.seen if _flag(exclude_seen) else None)

    @cached_property
    def _catalog(self) -> dict[str, set]:
        return catalog_values(self.run.dataset)  # once: a short filtered answer is common, not rare

    def _known(self, history: list[str], unknown_items: str) -> tuple[list[str], list[str]]:
        """(the history to describe the user with, the unknown items left out of it)."""
        if unknown_items == "error":
            return history, []
        ignored = users.unknown_items(self.run, history)
        dropped = set(ignored)
        # With none left, the whole history is refused as it would be with "error", naming every unknown id.
        return [item for item in history if item not in dropped] or history, ignored

    def _asked(self, query: Query | None, user, history, unknown_items: str) -> Query:
        if query is None:
            return self.query(user, history, unknown_items=unknown_items)
        if user is not None or history is not None:
            raise RecommenderError("give query= or user=/history=, not both")
        if not isinstance(query, Query):
            raise RecommenderError(f"query= takes the Query that `query()` returns, not {type(query).__name__}")
        return query


def _flag(exclude_seen) -> bool:
    # "no" is truthy: anything but a bool would silently mean True.
    if not isinstance(exclude_seen, (bool, np.bool_)):
        raise RecommenderError(f"exclude_seen is True or False, not {exclude_seen!r}")
    return bool(exclude_seen)


def _item_ids(history) -> list[str]:
    # A string is a sequence too: "i1,i2" would be read as the items "i", "1", ",", …
    if isinstance(history, (str, bytes)):
        raise RecommenderError(f"history is a list of item ids, not one string ({history!r})")
    return [str(item) for item in history]


MAX_NAMED = 5  # filter values named in one message; the rest are counted


def _listed(shown: list[str]) -> str:
    return ", ".join(shown[:MAX_NAMED]) + (f" and {len(shown) - MAX_NAMED} more" if len(shown) > MAX_NAMED else "")


def filter_report(dataset, filters: Mapping[str, object], exclude) -> list[str]:
    """Why a filtered search came back short, from the run's catalog (the items its export holds):
    how many items (unseen, with `exclude`) the filter matches, and the values no item has. A
    field whose every given value no item has is refused (`check_matchable`)."""
    excluded = set(exclude or ())
    typed = coerce_filters(filters, dataset.item_attribute_types or {})
    unknown = check_matchable(dataset, typed, catalog_values(dataset))
    matching, seen_matching = _matching(dataset, typed, excluded)
    verb = "matches" if matching == 1 else "match"
    reasons = [f"{matching} {'unseen ' if excluded else ''}item{'' if matching == 1 else 's'} {verb} the filter"
               + (f" ({seen_matching} the user has seen: --keep-seen includes them)" if seen_matching else "")]
    if unknown:
        reasons.append(f"no item has {unknown}")
    return reasons


def check_matchable(dataset, typed: dict[str, list], held: dict[str, set]) -> str:
    """RecommenderError when, for some field, no item has any of the values `typed` (from
    `coerce_filters`) gives: the filter matches nothing, which a caller would otherwise take for
    an empty answer. Else the values no item has, described (empty when there are none)."""
    types = dataset.item_attribute_types or {}
    unknown = [(name, value) for name, values in typed.items() for value in values
               if _key(types, name, value) not in held.get(name, ())]
    if not unknown:
        return ""
    lowered = {(name, str(value).casefold()) for name, value in unknown}
    similar = sorted(f"{name}={value}" for name, values in held.items() for value in values
                     if (name, str(value).casefold()) in lowered)
    textual = any(types.get(name) in ("keyword", "text") for name, _ in unknown)
    hint = f"; did you mean {', '.join(similar)}?" if similar else ""
    missing = _listed([f"{name}={value}" for name, value in unknown]) + (
        f" (values are case-sensitive{hint})" if textual else "")  # a number has no case
    if any(all((name, value) in unknown for value in values) for name, values in typed.items()):
        raise RecommenderError(f"no item has {missing}, so the filter matches nothing")
    return missing


def catalog_values(dataset) -> dict[str, set]:
    """Every value each item attribute takes, as the index types them."""
    types = dataset.item_attribute_types or {}
    held: dict[str, set] = {name: set() for name in types}
    for attrs in dataset.item_attributes or ():
        for name, raw in attrs.items():
            if name in held:
                held[name] |= {_key(types, name, v) for v in _as_list(raw) if v is not None}
    return held


def _matching(dataset, typed: dict[str, list], excluded: set[str]) -> tuple[int, int]:
    """(items matching every filter and not `excluded`, those that are)."""
    types = dataset.item_attribute_types or {}
    wanted = {name: {_key(types, name, v) for v in values} for name, values in typed.items()}
    matching = seen_matching = 0
    for item_id, attrs in zip(dataset.item_ids, dataset.item_attributes or ()):
        ok = all(not values.isdisjoint(_key(types, name, v) for v in _as_list(attrs.get(name)) if v is not None)
                 for name, values in wanted.items())
        matching += ok and item_id not in excluded
        seen_matching += ok and item_id in excluded
    return matching, seen_matching


def _as_list(raw) -> list:
    return raw if isinstance(raw, list) else [raw]


def _key(types: dict, name: str, value):
    return np.float32(value).item() if types.get(name) == "float" else value  # every backend stores float32
