"""`evaluate --run-file/--qrels`: the model's scores in an order trec_eval cannot reshuffle, files
that never replace something else, both written or neither, and users trec_eval would not see.

trec_eval ignores the rank column: it sorts a user's items by score read as a C float, ties broken
by item id in descending string order. These tests apply that rule directly (no pytrec_eval here).
"""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.data.dataset import Dataset, EvalSet
from sparcode.data.errors import DataError
from sparcode.eval import trec
from sparcode.eval.trec import write_run
from sparcode.staging import OccupiedTarget

ITEMS = ["a", "b", "9", "10", "x", "y"]


def parse_run(path):
    """user → [(rank, score as written, score as trec_eval's float, item)] in file order."""
    rows: dict[str, list] = {}
    for line in path.read_text().splitlines():
        user, q0, item, rank, score, _ = line.split()
        assert q0 == "Q0"
        rows.setdefault(user, []).append((int(rank), float(score), np.float32(float(score)), item))
    return rows


def trec_eval_order(rows):
    """The ranks in the order trec_eval reads them: score descending, then item id descending."""
    return [rank for rank, _, _, _ in sorted(rows, key=lambda r: (r[2], r[3]), reverse=True)]


def small_evalset(n_users):
    dataset = Dataset("t", [f"u{i}" for i in range(n_users)], ITEMS, [np.array([0])] * n_users)
    evalset = EvalSet(np.arange(n_users), np.zeros((n_users, 1), np.int64), [np.array([], np.int64)] * n_users,
                      [np.array([0])] * n_users)
    return dataset, evalset


def test_written_scores_are_the_true_ones_in_an_order_trec_eval_keeps(tmp_path):
    # Ties listed as we break them, each against trec_eval's rule: a before b ('b' sorts first),
    # 10 before 9 ('9' sorts first); a three-way tie at a value float32 cannot hold exactly; ties
    # at a large score; and (TIGER's sampled beams) a list whose scores rise.
    rankings = [[0, 1], [3, 2], [4, 0, 1], [5, 4, 3, 2], [0, 5], []]
    scores = [np.array([2.0, 2.0], np.float32), np.array([0.5, 0.5], np.float32), np.array([0.1, 0.1, 0.1]),
              np.array([3e6, 3e6, 3e6, -7.25], np.float32), np.array([-3.0, -1.5], np.float32), np.array([])]
    dataset, evalset = small_evalset(len(rankings))
    write_run(tmp_path / "run", [np.array(r, np.int64) for r in rankings], evalset, dataset, scores=scores)
    written = parse_run(tmp_path / "run")
    assert sorted(written) == [f"u{i}" for i in range(5)]  # the empty list writes nothing
    for row, ranked in enumerate(rankings[:5]):
        rows = written[f"u{row}"]
        assert [item for _, _, _, item in rows] == [ITEMS[i] for i in ranked]
        assert [rank for rank, _, _, _ in rows] == list(range(1, len(ranked) + 1))
        as_double, as_float = [r[1] for r in rows], [r[2] for r in rows]
        assert all(later < earlier for earlier, later in zip(as_double, as_double[1:])), rows
        assert all(later < earlier for earlier, later in zip(as_float, as_float[1:])), rows
        assert trec_eval_order(rows) == list(range(1, len(ranked) + 1))
        true = np.asarray(scores[row], np.float64)
        for i, value in enumerate(as_double):
            if i == 0 or true[i] <= true[i - 1]:  # a tie costs a few float32 ulps, no more
                assert value == pytest.approx(true[i], rel=1e-6, abs=0)
            else:  # a rise is pushed just under the score before it
                assert value < as_double[i - 1] and value == pytest.approx(as_double[i - 1], rel=1e-6)
    assert written["u0"][0][1] == 2.0 and written["u3"][3][1] == -7.25  # untied scores are exact


def write_file(path, text):
    path.write_text(text)
    return path.read_bytes()


def test_an_existing_file_is_replaced_only_when_it_is_a_trec_file_of_the_same_kind(tmp_path):
    sequences = tmp_path / "sequences.txt"
    before = write_file(sequences, "u1 i1 i2 i3 i4 i5 i6\n")
    with pytest.raises(OccupiedTarget, match=r"not a TREC run file \(its first line has 7 fields, not 6\)"):
        trec.TrecOutputs(sequences, None)
    with pytest.raises(OccupiedTarget, match="not a TREC qrels file"):
        trec.TrecOutputs(None, sequences)
    run = tmp_path / "old.run"
    write_file(run, "\nu1 Q0 i1 1 0.5 tag\n")
    with pytest.raises(OccupiedTarget, match="not a TREC qrels file"):
        trec.TrecOutputs(None, run)  # a run file is not qrels
    (tmp_path / "items.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe u1 0 a 1\n")
    with pytest.raises(OccupiedTarget, match="not a TREC qrels file .it is not UTF-8 text"):
        trec.TrecOutputs(None, tmp_path / "items.tsv.gz")  # a named dataset's files are compressed
    (tmp_path / "empty").write_text("")
    trec.TrecOutputs(run, tmp_path / "empty")  # earlier outputs and empty files may be replaced
    # Counting fields is not enough: a sequences line of 3 or 5 items has a qrels' or a run's.
    with pytest.raises(OccupiedTarget, match=r"second field is 'i1', not 0"):
        trec.TrecOutputs(None, write_file(tmp_path / "three.txt", "u0 i1 i2 i3\n") and tmp_path / "three.txt")
    with pytest.raises(OccupiedTarget, match=r"second field is 'i1', not Q0"):
        trec.TrecOutputs(write_file(tmp_path / "five.txt", "u0 i1 i2 i3 i4 i5\n") and tmp_path / "five.txt", None)
    with pytest.raises(OccupiedTarget, match=r"rank and score are not numbers"):
        trec.TrecOutputs(write_file(tmp_path / "q0.txt", "u0 Q0 i2 i3 i4 i5\n") and tmp_path / "q0.txt", None)
    # A dataset line that does read as qrels (numeric item ids): the run's dataset is refused by
    # name, a file inside it or the folder itself.
    data = tmp_path / "data"
    data.mkdir()
    four = write_file(data / "sequences.txt", "u1 0 7 1\n")
    with trec.TrecOutputs(None, data / "sequences.txt") as outputs:
        with pytest.raises(OccupiedTarget, match=r"sequences.txt is inside the run's dataset .*nothing was written"):
            outputs.stage([data])
    with trec.TrecOutputs(None, data / "sequences.txt") as outputs:
        with pytest.raises(OccupiedTarget, match=r"is the run's dataset"):
            outputs.stage([data / "sequences.txt"])
    assert sequences.read_bytes() == before and (data / "sequences.txt").read_bytes() == four
    assert sorted(p.name for p in data.iterdir()) == ["sequences.txt"]


def test_a_symbolic_link_is_written_through_and_one_to_nothing_is_named(tmp_path):
    target = tmp_path / "kept" / "target.qrels"
    target.parent.mkdir()
    write_file(target, "u1 0 i1 1\n")
    (tmp_path / "link.qrels").symlink_to(target)
    dataset, evalset = small_evalset(2)
    with trec.TrecOutputs(None, tmp_path / "link.qrels") as outputs:
        outputs.stage()
        outputs.write([], None, evalset, dataset, tag="t")
    assert (tmp_path / "link.qrels").is_symlink()  # the link stays, the file it names is replaced
    assert target.read_text().split("\n")[0] == f"{dataset.user_ids[evalset.users[0]]} 0 " \
                                                 f"{dataset.item_ids[evalset.targets[0][0]]} 1"
    (tmp_path / "dangling.run").symlink_to(tmp_path / "nowhere" / "x.run")
    with pytest.raises(OccupiedTarget, match=r"dangling.run is a symbolic link to nothing"):
        trec.TrecOutputs(tmp_path / "dangling.run", None)


def outputs_with_both(tmp_path):
    dataset, evalset = small_evalset(2)
    rankings, scores = [np.array([0, 1]), np.array([2])], [np.array([2.0, 1.0]), np.array([0.5])]
    run, qrels = tmp_path / "x.run", tmp_path / "x.qrels"
    write_file(run, "old Q0 a 1 1 old\n")
    return run, qrels, (rankings, scores, evalset, dataset, "t")


def test_a_failed_write_leaves_neither_file_and_names_the_users_path(tmp_path, monkeypatch):
    run, qrels, args = outputs_with_both(tmp_path)

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trec, "_write_qrels_lines", disk_full)
    with pytest.raises(DataError) as err, trec.TrecOutputs(run, qrels) as outputs:
        outputs.write(*args)
    assert str(err.value) == f"cannot write {qrels}: No space left on device"
    assert run.read_text() == "old Q0 a 1 1 old\n" and not qrels.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.run"]  # no hidden temporaries left


def test_when_the_second_file_cannot_be_moved_in_the_first_is_put_back(tmp_path, monkeypatch):
    run, qrels, args = outputs_with_both(tmp_path)
    real_replace = trec.os.replace

    def refuse_qrels(src, dst):
        if str(dst) == str(qrels):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(trec.os, "replace", refuse_qrels)
    with pytest.raises(DataError, match=f"^cannot write {qrels}: Invalid cross-device link$"), \
            trec.TrecOutputs(run, qrels) as outputs:
        outputs.write(*args)
    assert run.read_text() == "old Q0 a 1 1 old\n" and not qrels.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.run"]
    monkeypatch.setattr(trec.os, "replace", real_replace)
    with trec.TrecOutputs(run, qrels) as outputs:
        outputs.write(*args)
    assert run.read_text().splitlines()[0] == "u0 Q0 a 1 2.0 t" and qrels.read_text().startswith("u0 0 a 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.qrels", "x.run"]


# --- the command ------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory):
    """A multi-target EASE run on a tiny dataset: fitted in well under a second."""
    root = tmp_path_factory.mktemp("trec")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(np.arange((u % 3) * 8, (u % 3) * 8 + 8), 6, replace=False))
             for u in range(60)]
    (data / "sequences.txt").write_text("\n".join(lines) + "\n")
    (root / "cfg.json").write_text(json.dumps({"model": {"ease_lambda": [30]}}))
    result = invoke("train", "--model", "ease", "--dataset", data, "--split", "multi-target", "--out", root / "run",
                    "--config", root / "cfg.json", "--quiet")
    assert result.exit_code == 0, result.output
    return root, data, root / "run"


def test_the_run_file_holds_the_models_scores(ease_run, tmp_path):
    from sparcode.encoder.ease import EaseModel
    from sparcode.encoder.runs import open_run
    from sparcode.eval.harness import mask_seen

    _, _, run_dir = ease_run
    plain = invoke("evaluate", run_dir, "--json")
    result = invoke("evaluate", run_dir, "--json", "--run-file", tmp_path / "r.run", "--qrels", tmp_path / "q.qrels")
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout and not json.loads(result.stdout)["refitted"]  # --json is unchanged
    run = open_run(run_dir)
    evalset = run.split.test
    scores = EaseModel.load(run_dir / "ease").score_fn(evalset)(np.arange(len(evalset)))
    mask_seen(scores, list(evalset.seen))
    written = parse_run(tmp_path / "r.run")
    assert len(written) == len(evalset) > 0
    for row, user in enumerate(evalset.users):
        rows = written[run.dataset.user_ids[user]]
        assert rows[0][1] == pytest.approx(float(scores[row].max()), rel=1e-6)
        assert trec_eval_order(rows) == list(range(1, len(rows) + 1))


def test_the_runs_dataset_is_never_overwritten(ease_run):
    _, data, run_dir = ease_run
    before = (data / "sequences.txt").read_bytes()
    for flag in ("--qrels", "--run-file"):
        result = invoke("evaluate", run_dir, flag, data / "sequences.txt")
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "nothing was written" in result.output
    assert (data / "sequences.txt").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["sequences.txt"]


def test_the_feature_files_read_beside_a_dataset_file_are_never_overwritten(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "seq.txt").write_text("".join(f"u{u} i{u % 5} i{(u + 1) % 5} i{(u + 2) % 5} i{(u + 3) % 5}\n"
                                          for u in range(40)))
    (data / "users.tsv").write_text("u7\tg=a\tage=1\tocc=2\n")  # four fields, as qrels have
    (data / "items.tsv").write_text("i1\tg=a\tb=1\tc=2\td=3\te=4\n")  # six, as a run has
    (tmp_path / "cfg.json").write_text(json.dumps({"model": {"ease_lambda": [30]}}))
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    trained = invoke("train", "--model", "ease", "--dataset", data / "seq.txt", "--split", "multi-target",
                     "--out", tmp_path / "run", "--config", tmp_path / "cfg.json", "--quiet")
    assert trained.exit_code == 0, trained.output
    for flag, name in (("--qrels", "users.tsv"), ("--run-file", "items.tsv")):
        result = invoke("evaluate", tmp_path / "run", flag, data / name)
        assert result.exit_code == 1 and "nothing was written" in result.output, result.output
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    from sparcode.commands.evaluate import _dataset_paths
    from sparcode.encoder.runs import open_run

    protected = _dataset_paths(open_run(tmp_path / "run"))  # and by name, whatever they hold
    assert {data / name for name in ("seq.txt", "users.tsv", "items.tsv")} <= set(protected)


def test_an_unwritable_target_fails_before_scoring_and_writes_nothing(ease_run, tmp_path, monkeypatch):
    import sparcode.encoder.ease_run

    _, _, run_dir = ease_run

    def scored(*_, **__):
        raise AssertionError("the users were scored before the outputs were checked")

    monkeypatch.setattr(sparcode.encoder.ease_run, "evaluate_scores", scored, raising=False)
    result = invoke("evaluate", run_dir, "--run-file", tmp_path / "r.run", "--qrels", "/proc/sparcode-test.qrels")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "cannot write /proc/sparcode-test.qrels" in result.output and "/proc/." not in result.output
    assert list(tmp_path.iterdir()) == []


def test_users_without_a_ranked_item_are_named_with_the_trec_eval_flag_that_counts_them(ease_run, tmp_path,
                                                                                         monkeypatch):
    import sparcode.evaluation

    _, _, run_dir = ease_run
    real = sparcode.evaluation.evaluate_run

    def first_user_unranked(*args, **kwargs):
        metrics, rankings, scores, run, evalset = real(*args, **kwargs)
        rankings[0], scores[0] = rankings[0][:0], scores[0][:0]
        return metrics, rankings, scores, run, evalset

    monkeypatch.setattr(sparcode.evaluation, "evaluate_run", first_user_unranked)
    run_file, qrels = tmp_path / "r.run", tmp_path / "q.qrels"
    result = invoke("evaluate", run_dir, "--json", "--run-file", run_file, "--qrels", qrels)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (f"note: 1 users have no ranked items and are absent from {run_file}; "
                                     "use trec_eval -c to average over every user, as these metrics do")
    run_users = {line.split()[0] for line in run_file.read_text().splitlines()}
    qrels_users = {line.split()[0] for line in qrels.read_text().splitlines()}
    assert len(qrels_users - run_users) == 1
    quiet = invoke("evaluate", run_dir, "--json")
    assert quiet.stderr == ""


def test_tiger_lists_come_with_their_beam_log_probabilities(tmp_path):
    from test_tiger_train import toy_config, toy_dataset, write_toy_ids

    from sparcode.data.splits import make_split
    from sparcode.generative.train_tiger import evaluate_tiger, load_tiger, train_tiger

    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    train_tiger(tmp_path, dataset, split, toy_config(epochs=1), log=lambda *_: None, device="cpu")
    metrics, rankings, scores = evaluate_tiger(tmp_path, dataset, split, ks=(5, 10), device="cpu", return_scores=True)
    items, log_probs = load_tiger(tmp_path, dataset, device="cpu").rank(split.test.histories, split.test.users,
                                                                          metrics["beam_size"])
    assert len(scores) == len(rankings) == len(split.test) > 0
    for row, (ranked, row_scores) in enumerate(zip(rankings, scores)):
        found = items[row] >= 0
        assert ranked.tolist() == items[row][found][:10].tolist()
        assert np.array_equal(row_scores, log_probs[row][found][:10]) and (row_scores <= 0).all()
    write_run(tmp_path / "tiger.run", rankings, split.test, dataset, scores=scores)
    for rows in parse_run(tmp_path / "tiger.run").values():
        assert trec_eval_order(rows) == list(range(1, len(rows) + 1))
