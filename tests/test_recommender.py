"""`sparcode.recommender`, the Python API a service serves a SparCode run with: it must answer
exactly what `sparcode search` answers (same query, same hits and scores, in process and on each
engine), load the model once, query as the export says, and raise only SparcodeErrors."""
import json
import shutil
import uuid
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.encoder.runs import Run
from sparcode.errors import SparcodeError
from sparcode.recommender import Recommender, RecommenderError, UnknownItems, UnknownUser, check_servable

TINY = {
    "model": {"dim": 16, "codebooks": 2, "codes": 8, "user_tokens": 2, "scorer_hidden": 8, "tokenizer": "dnn",
              "kmeans_iters": 3},
    "train": {"epochs": 1, "batch_size": 64, "negatives": 16, "patience": 5, "max_history": 5, "threads": 1},
    "serve": {"stored_fraction": 0.3},
}
EXPORT_PROBES = 3  # not the run config's 8: the export's count must win


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """80 users in 4 taste groups over 40 items, with a user feature so a profile matters."""
    root = tmp_path_factory.mktemp("recommender")
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(np.arange((u % 4) * 10, (u % 4) * 10 + 10), 8,
                                                                 replace=False)) for u in range(80)]
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    (root / "items.tsv").write_text("".join(f"i{i}\tgenre=g{i // 10}\n" for i in range(40)))
    (root / "users.tsv").write_text("".join(f"u{u}\tgroup=a{u % 4}\n" for u in range(80)))
    (root / "tiny.json").write_text(json.dumps(TINY))
    run = root / "run"
    result = invoke("train", "--model", "sparcode", "--dataset", root, "--split", "leave-one-out", "--out", run,
                    "--config", root / "tiny.json", "--quiet")
    assert result.exit_code == 0, result.output
    export = root / "export"
    result = invoke("export", run, "--out", export, "--query-probes", EXPORT_PROBES, "--quiet")
    assert result.exit_code == 0, result.output
    return root, run, export, lines


@pytest.fixture(scope="module")
def local(trained):
    _, run, export, _ = trained
    return Recommender.open(run, export)


def cli_search(run, export, *args):
    result = invoke("search", "--run", run, "--export", export, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cli_body(run, export, *args):
    result = invoke("search", "--run", run, "--export", export, "--explain", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[: result.stdout.index("\nuser ") + 1])


def pairs(hits):
    return [(h["item_id"], h["score"]) if isinstance(h, dict) else (h.item_id, h.score) for h in hits]


def history_of(lines, row):
    return lines[row].split()[1:]


# --- the same answers as `sparcode search` ----------------------------------------------------------

def test_search_and_query_equal_the_cli_for_users_and_histories(trained, local):
    _, run, export, lines = trained
    answered = 0
    for user in ("u0", "u5", "u42"):
        cli = cli_search(run, export, "--backend", "local", "--user", user, "--k", 15)
        assert pairs(local.search(user=user, k=15)) == pairs(cli["hits"])
        assert local.query(user=user).terms == cli["query"]
        answered += bool(cli["hits"])
    history = history_of(lines, 7)[:4]
    cli = cli_search(run, export, "--backend", "local", "--history", ",".join(history), "--k", 15)
    assert pairs(local.search(history=history, k=15)) == pairs(cli["hits"])
    assert local.query(history=history).terms == cli["query"]
    answered += bool(cli["hits"])
    assert answered, "no search returned any hit: the comparisons above prove nothing"
    kept = cli_search(run, export, "--backend", "local", "--user", "u5", "--keep-seen", "--filter", "genre=g1")
    assert pairs(local.search(user="u5", filters={"genre": "g1"}, exclude_seen=False)) == pairs(kept["hits"])


def test_body_is_what_explain_prints(trained, local):
    _, run, export, _ = trained
    assert local.body(user="u3", k=7, filters={"genre": ["g0", "g2"]}) == cli_body(
        run, export, "--backend", "local", "--user", "u3", "--k", 7, "--filter", "genre=g0", "--filter", "genre=g2")


def test_queries_probe_as_the_export_was_made(trained, local):
    _, run, _, _ = trained
    assert local.query_probes == EXPORT_PROBES != local.run.config.serve.query_probes
    terms = local.query(user="u1").terms
    assert sum(terms.values()) == TINY["model"]["user_tokens"] * EXPORT_PROBES


def test_the_model_is_loaded_once_for_every_request(trained, monkeypatch):
    _, run, export, lines = trained
    loads = []
    original = Run.load_model

    def counted(self, *args, **kwargs):
        loads.append(self.path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Run, "load_model", counted)
    recommender = Recommender.open(run, export)
    for row in range(6):
        recommender.search(user=f"u{row}")
        recommender.search(history=history_of(lines, row))
        recommender.body(user=f"u{row}")
    assert len(loads) == 1


# --- profiles, unknown ids, misuse ----------------------------------------------------------------------

def test_a_known_users_profile_with_a_fresh_history(trained, local):
    _, _, _, lines = trained
    own = local.query(user="u9", history=history_of(lines, 9))
    recorded = local.query(user="u9")
    assert (own.terms, own.seen, own.row, own.user) == (recorded.terms, recorded.seen, recorded.row, "u9")
    fresh = local.query(user="u9", history=["i1", "i2"])
    assert fresh.row == recorded.row and set(fresh.seen) == {"i1", "i2"}
    assert local.query(history=["i1", "i2"]).row == local.run.dataset.n_users  # no profile


def test_unknown_ids_are_sparcode_errors_with_the_clis_messages(trained, local):
    _, run, export, _ = trained
    with pytest.raises(UnknownUser) as err:
        local.search(user="nobody")
    assert err.value.user_id == "nobody" and not isinstance(err.value, click.ClickException)
    cli = invoke("search", "--run", run, "--export", export, "--backend", "local", "--user", "nobody")
    assert cli.stderr.strip() == f"Error: {err.value}"
    with pytest.raises(UnknownItems) as err:
        local.query(history=["i1", "nosuch", "alsonot", "nosuch"])
    assert err.value.item_ids == ["nosuch", "alsonot"]
    assert "unknown items 'nosuch', 'alsonot' in the history" in str(err.value)
    assert isinstance(err.value, SparcodeError)


def test_unknown_history_items_may_be_ignored_but_not_all_of_them(local):
    lenient = local.query(history=["x1", "i1", "i2", "x2"], unknown_items="ignore")
    assert lenient.ignored == ("x1", "x2")
    assert lenient.terms == local.query(history=["i1", "i2"]).terms
    assert pairs(local.search(history=["x1", "i1", "i2"], unknown_items="ignore")) == pairs(
        local.search(history=["i1", "i2"]))
    with pytest.raises(UnknownItems, match="unknown items 'x1', 'x2'"):
        local.query(history=["x1", "x2"], unknown_items="ignore")


@pytest.mark.parametrize("call, message", [
    (lambda r: r.query(), "give user=ID"),
    (lambda r: r.query(history="i1,i2"), "not one string"),
    (lambda r: r.query(history=["i1"], unknown_items="skip"), "unknown_items must be one of"),
    (lambda r: r.search(user="u1", query=r.query(user="u1")), "not both"),
])
def test_misuse_is_a_recommender_error(local, call, message):
    with pytest.raises(RecommenderError, match=message):
        call(local)


def test_a_k_below_one_is_refused_by_the_backend_as_a_sparcode_error(local):
    with pytest.raises(SparcodeError, match="k"):
        local.search(user="u1", k=0)


def test_an_export_of_another_model_is_refused(trained, tmp_path):
    _, run, export, _ = trained
    other = tmp_path / "other"
    shutil.copytree(export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecommenderError) as err:
        Recommender.open(run, other)
    cli = invoke("search", "--run", run, "--export", other, "--backend", "local", "--user", "u1")
    assert "exported from another model" in str(err.value) and cli.stderr.strip() == f"Error: {err.value}"


def test_without_an_export_the_runs_last_one_serves(trained, local):
    _, run, _, _ = trained  # the fixture's export is the run's last
    assert pairs(Recommender.open(run).search(user="u2")) == pairs(local.search(user="u2"))


def test_other_model_kinds_are_refused_naming_what_serves_them():
    for kind, serves in (("two-tower", "--backend hnsw|es-knn|exact"), ("tiger", "--backend tiger"),
                         ("ease", "sparcode evaluate")):
        with pytest.raises(RecommenderError, match=serves):
            check_servable(SimpleNamespace(kind=kind, path="runs/x"))


def test_node_settings_without_an_alias_are_refused(trained):
    _, run, export, _ = trained
    with pytest.raises(RecommenderError, match="^url, retries choose the node holding alias; give alias=NAME"):
        Recommender.open(run, export, url="http://127.0.0.1:9250", engine=None, retries=0)
    with pytest.raises(RecommenderError, match="engine is one of elasticsearch, opensearch"):
        Recommender.open(run, export, alias="x", engine="solr")


# --- on the engines ---------------------------------------------------------------------------------------

def indexed(trained, engine, engine_name):
    from conftest import drop_alias_family

    _, _, export, _ = trained
    alias = f"sparcode-test-rec-{uuid.uuid4().hex[:8]}"
    result = invoke("reindex", export, "--alias", alias, "--engine", engine_name, "--url", engine.url)
    assert result.exit_code == 0, result.output
    yield alias
    drop_alias_family(engine, alias)


@pytest.fixture(scope="module")
def es_alias(trained, es_engine):
    yield from indexed(trained, es_engine, "elasticsearch")


@pytest.fixture(scope="module")
def os_alias(trained, os_engine):
    yield from indexed(trained, os_engine, "opensearch")


def assert_engine_answers_as_the_cli(trained, local, node, alias, backend):
    _, run, export, lines = trained
    # engine=None: the node says what it is, as `search --url` without --backend asks it.
    served = Recommender.open(run, export, alias=alias, url=node.url)
    flags = ("--backend", backend, "--alias", alias, "--url", node.url, "--k", 12)
    history = history_of(lines, 11)[:3]
    for asked, args in (({"user": "u4"}, ("--user", "u4")), ({"history": history}, ("--history", ",".join(history)))):
        cli = cli_search(run, export, *flags, *args)
        hits = served.search(**asked, k=12)
        assert hits and pairs(hits) == pairs(cli["hits"]) == pairs(local.search(**asked, k=12))
        assert served.query(**asked).terms == cli["query"]
        assert served.body(**asked, k=12) == cli_body(run, export, *flags, *args)


def test_elasticsearch_answers_as_the_cli(trained, local, es_engine, es_alias):
    assert_engine_answers_as_the_cli(trained, local, es_engine, es_alias, "es")


def test_opensearch_answers_as_the_cli(trained, local, os_engine, os_alias):
    assert_engine_answers_as_the_cli(trained, local, os_engine, os_alias, "opensearch")


def test_an_export_replaced_between_the_model_check_and_the_backend_is_refused(trained, tmp_path, monkeypatch):
    """The backend opens the export folder again after the model check: another model's export
    swapped in between would be served under a check it never passed."""
    import sparcode.recommender as recommender
    from sparcode.pipeline.export import ExportError

    _, run, export, _ = trained
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    other = tmp_path / "other"
    shutil.copytree(export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0" * 64}))
    real_open_backend = recommender.open_backend

    def another_model_lands(**kwargs):
        folder.rename(tmp_path / "old")
        other.rename(folder)
        return real_open_backend(**kwargs)

    monkeypatch.setattr(recommender, "open_backend", another_model_lands)
    with pytest.raises(ExportError, match=f"{folder} was replaced while it was being read"):
        Recommender.open(run, folder)


def test_misshapen_requests_and_unmatchable_filters_are_sparcode_errors(trained, local):
    """A service must tell "nothing to recommend" from "asked wrongly": a filter no item can
    match is refused as `sparcode search` refuses it, never answered with []."""
    from sparcode.pipeline.query import QueryError

    with pytest.raises(RecommenderError, match=r"no item has genre=G1 \(values are case-sensitive; did you mean "
                                               r"genre=g1\?\), so the filter matches nothing"):
        local.search(user="u1", k=40, filters={"genre": "G1"})
    assert local.search(user="u1", k=5, filters={"genre": " g1 "}, exclude_seen=False) == \
        local.search(user="u1", k=5, filters={"genre": ["g1"]}, exclude_seen=False)
    for kwargs, error in (({"filters": [("genre", "g1")]}, QueryError), ({"filters": {"genre": None}}, QueryError),
                          ({"exclude_seen": "no"}, RecommenderError)):
        with pytest.raises(error):
            local.search(user="u1", **kwargs)
    with pytest.raises(RecommenderError, match="query= takes the Query"):
        local.search(query={"c0001_0001": 1.0})
