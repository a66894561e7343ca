"""`sparcode search`: top-k items for one user, served by the chosen backend."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from sparcode.commands._common import check_alias, check_url, strict_json, url_option, user_errors
from sparcode.pipeline.backends import MAX_RESULT_WINDOW

BACKENDS = ["local", "es", "opensearch", "hnsw", "es-knn", "exact", "tiger"]


def _check_filters(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """A malformed --filter is a usage error, caught before the run or the node is opened."""
    from sparcode.pipeline.query import QueryError, parse_filter

    for text in values:
        try:
            parse_filter(text)
        except QueryError as exc:
            raise click.BadParameter(str(exc)) from None
    return values


def default_backend(kind: str, url: str | None = None) -> str:
    """A node when one is named (--url, ELASTICSEARCH_URL), else in process; the engine at --url
    is asked what it is, as `index --url` does."""
    if kind == "two-tower":
        return "es-knn" if url else "hnsw"
    if url:
        from sparcode.pipeline.connect import connect

        return "opensearch" if connect(url).name == "opensearch" else "es"
    return "es" if os.environ.get("ELASTICSEARCH_URL") else "local"


ENGINE_OF_BACKEND = {"es": "elasticsearch", "opensearch": "opensearch"}  # the SparCode backends that search a node


def engine_of(backend: str, alias: str | None) -> str | None:
    """The engine a SparCode --backend searches (None: the export, in process)."""
    if backend == "local":
        return None
    if not alias:
        raise click.ClickException(f"--backend {backend} needs --alias NAME (the alias `sparcode index` created)")
    return ENGINE_OF_BACKEND[backend]


def open_serving_backend(backend: str, run, export_dir: Path | None, alias: str | None, url: str | None = None):
    """`sparcode.recommender.open_serving` for a --backend: the backend serving `run`'s export and
    the query probes that export was made with."""
    from sparcode.recommender import open_serving

    engine = engine_of(backend, alias)
    return open_serving(run, export_dir, alias=alias if engine else None, engine=engine, url=url)


MAX_K = MAX_RESULT_WINDOW


@click.command("search")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              metavar="RUN_DIR", help="The trained run whose model turns the user into a query.")
@click.option("--user", "user_id", default=None, metavar="USER_ID", help="External user id, as in the dataset.")
@click.option("--history", "history_items", default=None, metavar="ITEM,ITEM,...",
              help="Instead of --user: the items an unknown user interacted with, oldest first, comma-separated.")
@click.option("--history-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Like --history, from a UTF-8 file of item ids separated by spaces, tabs or "
                                   "newlines (for ids that contain commas).")
@click.option("--k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help=f"How many items (at most {MAX_K:,}, a search node's default result window).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Default: es when --url or ELASTICSEARCH_URL is set, else the embedded local backend; "
                   "hnsw (es-knn with --url) for two-tower runs (hnsw, es-knn and exact serve two-tower vector exports); "
                   "tiger, the only choice for TIGER runs (constrained beam search over semantic IDs).")
@click.option("--alias", default=None, help="Index alias (es/opensearch backends; with a TIGER run: the alias of its "
                                             "semantic-ID export, which then supplies the cold-start prefix matches).")
@click.option("--export", "export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Export directory (default: the run's last export).")
@click.option("--filter", "filters", multiple=True, callback=_check_filters, metavar="FIELD=VALUE", help="Attribute filter FIELD=VALUE, e.g. genres=Comedy. Repeatable: values of one field are "
                   "alternatives (any of them), different fields must all match.")
@click.option("--exclude-seen/--keep-seen", default=True, show_default=True, help="Drop items the user already has.")
@click.option("--explain", is_flag=True,
              help="Print the search request body: with es/opensearch the exact one sent (replay it with curl: "
                   "POST /<alias>/_search); with local, which sends nothing, the one an Elasticsearch index of "
                   "this export would be sent.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@click.option("--ef", type=click.IntRange(min=1), default=None, help="hnsw: candidates kept by the walk (≥ k; default 100).")
@click.option("--num-candidates", type=click.IntRange(min=1), default=None,
              help="es-knn: candidates per shard (≥ k; default 100).")
@url_option
def command(run_dir, user_id, history_items, history_file, k, backend, alias, export_dir, filters, exclude_seen, explain,
            as_json, ef, num_candidates, url):
    """Recommend K items for USER: user → tokens → codes → one term query (two-tower: user vector → ANN)."""
    with user_errors():
        from sparcode.encoder.runs import open_run
        from sparcode.pipeline.query import parse_filter

        if sum(given is not None for given in (user_id, history_items, history_file)) != 1:
            raise click.UsageError("give exactly one of --user ID, --history ITEM,ITEM,… and --history-file FILE")
        if history_file is not None:
            history_items = _history_from_file(history_file)
        elif history_items is not None:
            history_items = [item.strip() for item in history_items.split(",") if item.strip()]
        if backend not in (None, "tiger"):  # unset, the default is a node's whenever --url is given
            check_url(backend, url)
        run = open_run(run_dir)
        if history_items is not None and (run.kind == "tiger" or backend == "tiger"):
            given = "--history-file" if history_file is not None else "--history"
            raise click.ClickException(f"{given} is not supported for TIGER runs (its user tokens come from "
                                       "training); use --user")
        if run.kind == "tiger" or backend == "tiger":
            ignored = [flag for flag, given in (("--filter", filters), ("--export", export_dir), ("--ef", ef),
                                                 ("--num-candidates", num_candidates)) if given]
            if ignored:  # beam search has none of these; silently ignoring them answered another question
                raise click.UsageError(f"{', '.join(ignored)} do not apply to TIGER's beam search")
            if url is not None and not alias:
                raise click.UsageError("--url is the node holding the TIGER run's --alias; give --alias too")
            _search_tiger(run, user_id, k, backend, exclude_seen, as_json, alias, explain, url)
            return
        backend = backend or default_backend(run.kind, url)
        from sparcode.commands._vectors import check_backend, check_knobs

        check_backend(run.kind, backend)
        check_alias(backend, alias)
        check_knobs(backend, ef, num_candidates)
        if run.kind != "sparcode" and run.kind != "two-tower":
            raise click.ClickException(f"search serves SparCode runs; {run_dir} was trained with --model {run.kind}")
        parsed = {}
        for text in filters:
            name, value = parse_filter(text)
            parsed.setdefault(name, []).append(value)
        if run.kind == "two-tower":
            query, seen, hits = _search_two_tower(run, user_id, history_items, backend, alias, export_dir, url, k,
                                                  parsed, exclude_seen, explain, ef, num_candidates)
        else:
            query, seen, hits = _search_sparcode(run, user_id, history_items, backend, alias, export_dir, url, k,
                                                 parsed, exclude_seen, explain)
        if history_items is not None:
            user_id = "(history)"
        exclude = seen if exclude_seen else None
        # Only a short list raises the question of why; the catalog answers it, and a filter
        # that no item can match is refused like an unknown field.
        short_because = _why_short(run, parsed, exclude) if len(hits) < k else None
    titles = {}
    attrs = run.dataset.item_attributes
    if attrs:
        index_of = {item: i for i, item in enumerate(run.dataset.item_ids)}
        titles = {h.item_id: _title(attrs[index_of[h.item_id]].get("title")) for h in hits}
    if as_json:
        shown = query.tolist() if run.kind == "two-tower" else query
        reply = {"user": user_id, "backend": backend, "query": shown,
                 "hits": [{"item_id": h.item_id, "score": h.score, "title": titles.get(h.item_id)} for h in hits]}
        if short_because is not None:  # a program reading a short list needs the reason as much as a person
            reply["fewer_than_k"] = {"k": k, "returned": len(hits), "reasons": short_because}
        click.echo(strict_json(reply))
        _say_why_short(short_because, hits, k, filters)
        return
    if run.kind == "two-tower":
        import numpy as np

        click.echo(f"user {user_id} · vector dim {len(query)}, norm {float(np.linalg.norm(query)):.3f} · backend {backend}")
    else:
        click.echo(f"user {user_id} · codes {' '.join(f'{t}×{int(c)}' if c != 1 else t for t, c in query.items())} · backend {backend}")
    for rank, hit in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {hit.item_id:>8}  {hit.score:9.4f}  {titles.get(hit.item_id) or ''}")
    _say_why_short(short_because, hits, k, filters)


def _search_sparcode(run, user_id, history_items, backend, alias, export_dir, url, k, filters, exclude_seen,
                     explain):
    """(query terms, seen items, hits) through `sparcode.recommender`, the library's own path."""
    from sparcode.recommender import Recommender

    engine = engine_of(backend, alias)
    recommender = Recommender.from_run(run, export_dir, alias=alias if engine else None, engine=engine, url=url)
    asked = recommender.query(user=user_id, history=history_items)
    if explain:  # printed before searching, so a request the node refuses can still be replayed
        click.echo(json.dumps(recommender.body(query=asked, k=k, filters=filters, exclude_seen=exclude_seen), indent=2))
    return asked.terms, list(asked.seen), recommender.search(query=asked, k=k, filters=filters,
                                                             exclude_seen=exclude_seen)


def _search_two_tower(run, user_id, history_items, backend, alias, export_dir, url, k, filters, exclude_seen,
                      explain, ef, num_candidates):
    """(user vector, seen items, hits) from the run's user tower and a vector backend."""
    import numpy as np

    from sparcode.commands._vectors import open_vector_backend, user_vectors
    from sparcode.encoder.users import items_history, user_history

    if history_items is not None:
        user_index, history, seen = items_history(run, history_items)
    else:
        user_index, history, seen = user_history(run, user_id)
    model, device = run.load_model()
    query = user_vectors(model, np.asarray([user_index]), history[None, :], device)[0]
    engine = open_vector_backend(backend, run.path, export_dir, alias, run.fingerprint(), k=k, ef=ef,
                                 num_candidates=num_candidates, url=url)
    exclude = seen if exclude_seen else None
    if explain and not hasattr(engine, "explain"):
        raise click.ClickException(f"--explain shows a search-engine request; --backend {backend} sends none")
    if explain:
        click.echo(json.dumps(engine.explain(query, k, filters or None, exclude), indent=2))
    return query, seen, engine.search(query, k, filters or None, exclude)


def _say_why_short(short_because: list[str] | None, hits, k: int, filters) -> None:
    # Fewer than k is a valid answer (a filter, or no stored score), but an unexplained one looks broken.
    if short_because is None:
        return
    returned = "no items matched" if not hits else f"{len(hits)} of {k} items returned"
    shown = f" (--filter {' '.join(filters)})" if filters else ""
    click.echo(f"{returned}{shown}" + (f": {'; '.join(short_because)}" if short_because else ""), err=True)


def _why_short(run, filters: dict[str, list[str]], exclude) -> list[str]:
    """The reasons a search returned fewer than k items, as far as the run's dataset (the items
    its export holds) tells; a filter that no item can match raises instead."""
    from sparcode.recommender import filter_report

    reasons = []
    if run.kind == "sparcode":  # the sparse index: an item needs a posting for one of the user's codes
        reasons.append("only items with a stored score for this user's codes can be returned")
    return reasons + (filter_report(run.dataset, filters, exclude) if filters else [])


def _history_from_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise click.ClickException(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    return [item for item in re.split(r"[ \t\r\n]+", text) if item]


def _title(value):
    """A generic dataset's `title` feature is a list of values (usually one)."""
    return " ".join(map(str, value)) if isinstance(value, list) else value


def _search_tiger(run, user_id: str, k: int, backend: str | None, exclude_seen: bool, as_json: bool,
                  alias: str | None = None, explain: bool = False, url: str | None = None) -> None:
    """A TIGER run generates item IDs with constrained beam search. With --alias, the cold items
    sharing a generated prefix come from the run's `sid` index instead of the in-process table."""
    if run.kind != "tiger" or backend not in (None, "tiger"):
        raise click.ClickException(f"--backend tiger serves TIGER runs only; "
                                   f"{run.path} was trained with --model {run.kind}"
                                   if run.kind != "tiger" else f"a TIGER run is served by --backend tiger, not {backend}")
    if explain and not alias:
        raise click.ClickException("--explain shows the prefix request sent to the engine; give --alias NAME "
                                   "(an index of `sparcode export` on this TIGER run)")
    from sparcode.generative.train_tiger import TigerSearcher

    prefixes = None
    if alias:
        from sparcode.generative.sid_export import sid_fingerprint
        from sparcode.pipeline.connect import connect
        from sparcode.pipeline.sid_search import SidPrefixBackend

        prefixes = SidPrefixBackend(connect(url), alias, expected_fingerprint=sid_fingerprint(run.path))
    searcher = TigerSearcher(run.path, dataset=run.dataset, prefix_backend=prefixes)
    try:
        hits = searcher.search(user_id, k, exclude_seen=exclude_seen, cold_slots=searcher.tiger.cfg.cold_slots)
    except KeyError as err:
        raise click.ClickException(str(err.args[0])) from None
    if explain:
        click.echo(json.dumps(prefixes.last_bodies[0] if prefixes.last_bodies else None, indent=2))
    attrs = run.dataset.item_attributes
    index_of = {item: i for i, item in enumerate(run.dataset.item_ids)}
    title = (lambda item: _title(attrs[index_of[item]].get("title"))) if attrs else (lambda item: None)
    if as_json:
        # A cold item placed by prefix match has no generated score: null, marked as such.
        click.echo(strict_json({"user": user_id, "backend": "tiger",
                                "hits": [{"item_id": i, "score": s, "cold_prefix_match": s == float("-inf"),
                                          "title": title(i)} for i, s in hits]}))
        return
    cold_from = f"; cold items by prefix from {alias}" if alias else ""
    click.echo(f"user {user_id} · backend tiger (constrained beam search over semantic IDs{cold_from})")
    for rank, (item, score) in enumerate(hits, 1):
        shown = f"{score:9.4f}" if score != float("-inf") else f"{'cold':>9}"
        click.echo(f"{rank:>3}  {item:>8}  {shown}  {title(item) or ''}")
