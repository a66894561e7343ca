"""What TIGER does with imperfect inputs: items without text, the cold-slot share at small k,
the way out of an RQ-VAE settings mismatch, and items without a category in Entropy@K."""
from __future__ import annotations

import json
import re
import shlex
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.data.errors import DataError
from sparcode.generative.beam import ColdIndex


def catalogue(name, with_text, total):
    attributes = [{"title": [f"thing {i}"]} if i < with_text else {"color": []} for i in range(total)]
    return SimpleNamespace(name=name, item_ids=[f"i{i}" for i in range(total)], item_attributes=attributes)


def test_a_few_items_without_text_are_named_in_one_warning(tmp_path, monkeypatch, capsys):
    from sparcode.generative import text

    monkeypatch.setattr(text, "embed_texts", lambda texts, **_: np.ones((len(texts), 4), dtype=np.float32))
    text.item_embeddings(catalogue("toy", 3, 4), tmp_path, log=lambda _: None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of 4 items have no text" in err and "their id alone" in err
    text.item_embeddings(catalogue("toy", 4, 4), tmp_path / "whole", log=lambda _: None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["toy", "beauty"])  # a folder dataset, and the named one whose items.jsonl.gz lacks items
@pytest.mark.parametrize("with_text", [0, 1])
def test_a_catalogue_mostly_without_text_is_refused(name, with_text):
    from sparcode.generative.text import dataset_texts

    with pytest.raises(DataError, match=rf"data/x: {3 - with_text} of 3 items have no text"):
        dataset_texts(catalogue(name, with_text, 3), "data/x")
    assert len(dataset_texts(catalogue(name, 2, 3), "data/x")) == 3  # one of three: built, with the warning


def test_semantic_ids_refuses_a_folder_whose_items_tsv_covers_few_items(tmp_path):
    from sparcode.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "sequences.txt").write_text("".join(f"u{u} " + " ".join(f"i{(u + j) % 12}" for j in range(5)) + "\n"
                                                for u in range(10)))
    (data / "items.tsv").write_text("i0\ttitle=zero\ni1\ttitle=one\n")
    result = CliRunner().invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "10 of 12 items have no text" in result.output, result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "run").exists()


def test_cold_items_never_take_more_than_their_share_of_the_top_k():
    ids = np.array([[0, 0, 0, i] for i in range(300)])
    cold = ColdIndex(ids, np.arange(150, 300), depth=3)
    ranked = np.arange(150)
    for k in range(1, 10):  # below k = 10 the default 10 % is less than one place
        assert cold.mix(ranked, k, 0.1).tolist() == list(range(k))
    assert cold.mix(ranked, 10, 0.1).tolist() == list(range(9)) + [150]
    limits = []
    lookup = lambda generated, skip, limit: limits.append(limit) or []  # noqa: E731 (the Elasticsearch path)
    for k, slots in ((1, 0.1), (9, 0.1), (10, 0.1), (19, 0.1), (100, 0.29), (10, 0.3)):
        cold.mix(ranked, k, slots, lookup=lookup)
    assert limits == [0, 0, 1, 1, 29, 3]


def test_entropy_leaves_out_items_without_a_category():
    from sparcode.generative.train_tiger import category_entropy, leaf_categories

    categories = leaf_categories(SimpleNamespace(item_attributes=[
        {"categories": ["Beauty", "Nails"]}, {"title": "a"}, {"categories": []}, {"categories": ["Beauty", "Hair"]}]))
    # Two items without a category are not one shared category: one known category is no diversity.
    assert category_entropy([np.array([0, 1, 2])], categories) == 0.0
    assert category_entropy([np.array([0, 3, 1])], categories) == pytest.approx(np.log(2))
    # A user whose list has no categorised item does not count towards the mean.
    assert category_entropy([np.array([1, 2]), np.array([0, 3])], categories) == pytest.approx(np.log(2))
    assert np.isnan(category_entropy([np.array([1, 2])], categories))


def test_the_settings_mismatch_hint_is_a_command_that_works(tmp_path, monkeypatch):
    """The refusal names `semantic-ids` with the run's dataset and config file; running it and
    then the same `train` succeeds, on the IDs the file asked for."""
    from sparcode.cli import main
    from test_tiger_train import write_text_dataset

    data = write_text_dataset(tmp_path, monkeypatch)
    run, runner = tmp_path / "run", CliRunner()
    assert runner.invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(run), "--epochs", "3"]).exit_code == 0
    config = tmp_path / "rq.json"
    config.write_text(json.dumps({"train": {"batch_size": 4}, "tiger": {"rqvae": {"epochs": 5, "codes": 8}}}))
    train = ["train", "--model", "tiger", "--dataset", str(data), "--split", "leave-one-out", "--out", str(run),
             "--epochs", "1", "--quiet", "--config", str(config)]
    refused = runner.invoke(main, train)
    assert refused.exit_code == 1, refused.output
    hint = shlex.split(re.search(r"`(sparcode semantic-ids [^`]*)`", refused.output).group(1))
    assert hint[hint.index("--dataset") + 1] == str(data) and hint[hint.index("--config") + 1] == str(config)
    rebuilt = runner.invoke(main, hint[1:])
    assert rebuilt.exit_code == 0, rebuilt.output
    trained = runner.invoke(main, train)
    assert trained.exit_code == 0, trained.output
    assert {k: json.loads((run / "config.json").read_text())["tiger"]["rqvae"][k] for k in ("epochs", "codes")} == \
        {"epochs": 5, "codes": 8}


def test_semantic_ids_config_and_recorded_dataset(tmp_path, monkeypatch):
    from sparcode.cli import main
    from sparcode.generative.semantic_ids import load_ids
    from test_tiger_train import write_text_dataset

    data = write_text_dataset(tmp_path, monkeypatch)
    run, runner = tmp_path / "run", CliRunner()
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"tiger": {"rqvae": {"codez": 8}}}))
    refused = runner.invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(run), "--config", str(typo)])
    assert refused.exit_code == 1 and str(typo) in refused.output and "codez" in refused.output, refused.output
    config = tmp_path / "rq.json"
    config.write_text(json.dumps({"seed": 4, "tiger": {"rqvae": {"epochs": 2, "codes": 8}}}))
    built = runner.invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(run), "--config", str(config)])
    assert built.exit_code == 0, built.output
    _, meta = load_ids(run / "tiger")
    assert {k: meta["rqvae_config"][k] for k in ("epochs", "codes", "seed")} == {"epochs": 2, "codes": 8, "seed": 4}
    # A rebuild not told the dataset takes the one the IDs were built from, not Beauty.
    again = runner.invoke(main, ["semantic-ids", "--out", str(run), "--epochs", "3", "--force"])
    assert again.exit_code == 0 and f"items of {data}" in again.output, again.output
