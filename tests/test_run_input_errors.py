"""What a user can do wrong around a run directory — too little data, a damaged or unfinished
run, data edited after training, an occupied --out — ends in one line naming the cause, a
non-zero exit, and nothing half-written."""
import json
import shutil

import pytest

from test_cli_end_to_end import TINY, invoke, make_dataset, trained  # noqa: F401  (module-scoped fixture)


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("split,lines,missing", [
    ("multi-target", ["u1 i1 i2 i3", "u2 i2 i3 i4", "u3 i1 i4 i2"], "no validation users"),
    ("leave-one-out", ["u1 i1 i2", "u2 i2 i3"], "no training windows"),
    ("leave-one-out", ["u1 i1 i2 i3", "u2 i2 i3 i1"], "no training windows"),
])
def test_a_dataset_too_small_to_split_is_refused_before_anything_is_written(tmp_path, split, lines, missing):
    data = tmp_path / "small.txt"
    data.write_text("\n".join(lines) + "\n")
    result = invoke("train", "--model", "ease", "--dataset", data, "--split", split, "--out", tmp_path / "run")
    one_line_error(result, str(data), missing)
    assert not (tmp_path / "run").exists()


def test_damaged_run_files_are_named_in_one_line(trained, tmp_path):
    _, _, _, run = trained
    for name, content in (("weights.pt", b""), ("weights.pt", b"PK\x03\x04 not a zip"), ("run.json", b"{\"a\": "),
                          ("run.json", b"[1]"), ("config.json", b"{\"model\": {\"foo\": 1}}")):
        copy = tmp_path / f"{name}-{len(content)}"
        shutil.copytree(run, copy)
        (copy / name).write_bytes(content)
        one_line_error(invoke("evaluate", copy), str(copy / name))


def test_a_damaged_ease_model_is_named_in_one_line(trained, tmp_path):
    _, data, _, _ = trained
    assert invoke("train", "--model", "ease", "--dataset", data, "--out", tmp_path / "ease").exit_code == 0
    (tmp_path / "ease" / "ease" / "ease.json").write_text("{")
    one_line_error(invoke("evaluate", tmp_path / "ease"), "ease.json", "not valid JSON")


def test_an_unfinished_run_is_evaluated_with_a_warning_but_not_exported_or_served(trained, tmp_path):
    _, _, _, run = trained
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "run.json").unlink()
    looked = invoke("evaluate", unfinished, "--json")
    assert looked.exit_code == 0, looked.output
    assert "has not finished training" in looked.stderr
    assert json.loads(looked.stdout)["unfinished"] is True
    one_line_error(invoke("export", unfinished, "--out", tmp_path / "export"), "has not finished training", "--resume")
    assert not (tmp_path / "export").exists()
    one_line_error(invoke("search", "--run", unfinished, "--user", "u1", "--backend", "local"),
                   "has not finished training")


def test_data_edited_after_training_is_noticed(tmp_path):
    data = make_dataset(tmp_path / "data")
    assert invoke("train", "--model", "ease", "--dataset", data, "--out", tmp_path / "ease").exit_code == 0
    sequences = data / "sequences.txt"
    sequences.write_text(sequences.read_text() + "u999 i1 i2 i3 i4\n")  # known items, one more user
    one_line_error(invoke("evaluate", tmp_path / "ease"), "has changed since", "train again")


def test_out_must_be_new_empty_or_a_run_resumed(trained, tmp_path):
    _, data, cfg, run = trained
    occupied = tmp_path / "notes"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", occupied), "holds no sparcode run")
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "run.json").unlink()
    one_line_error(invoke("train", "--dataset", data, "--out", unfinished, "--config", cfg), "unfinished run",
                   "--resume")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("train", "--model", "ease", "--dataset", data, "--out", empty).exit_code == 0


def test_an_out_below_a_file_is_one_line_not_a_traceback(trained, tmp_path):
    _, data, _, _ = trained
    (tmp_path / "afile").write_text("")
    one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", tmp_path / "afile" / "run"),
                   str(tmp_path / "afile"))


def test_config_file_errors_name_the_file_and_a_bom_is_accepted(trained, tmp_path):
    _, data, _, _ = trained
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text(json.dumps({"train": {"epochs": "3"}}))
    one_line_error(invoke("train", "--dataset", data, "--out", tmp_path / "r", "--config", wrong_type),
                   str(wrong_type), "train.epochs must be an integer")
    too_long = tmp_path / "long.json"
    too_long.write_text(json.dumps({"train": {"max_history": 10**9}}))
    one_line_error(invoke("train", "--dataset", data, "--out", tmp_path / "r", "--config", too_long),
                   "train.max_history must be in [1, 10000]")
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({**TINY, "train": {**TINY["train"], "epochs": 1}}).encode())
    result = invoke("train", "--model", "two-tower", "--dataset", data, "--out", tmp_path / "r", "--config", with_bom,
                    "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("section,key,value,shown", [
    ("model", "dim", 32, "model.dim 16 → 32"),  # the checkpoint would not even load
    ("train", "lr", 0.01, "train.lr 0.001 → 0.01"),  # it would, and train on under other settings
])
def test_a_resume_that_changes_more_than_the_budget_is_refused_and_leaves_the_run_as_it_was(
        trained, tmp_path, section, key, value, shown):
    _, data, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**TINY, section: {**TINY[section], key: value}}))
    one_line_error(invoke("train", "--dataset", data, "--out", copy, "--config", changed, "--resume", "--quiet"),
                   "cannot resume", shown, "drop --config")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
    assert invoke("evaluate", copy).exit_code == 0


def test_resume_alone_continues_the_run_with_its_own_config(trained, tmp_path):
    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = json.loads((copy / "config.json").read_text())
    result = invoke("train", "--out", copy, "--resume", "--epochs", before["train"]["epochs"] + 1, "--quiet")
    assert result.exit_code == 0, result.output
    after = json.loads((copy / "config.json").read_text())
    assert after == {**before, "train": {**before["train"], "epochs": before["train"]["epochs"] + 1}}
    assert len((copy / "history.jsonl").read_text().splitlines()) == before["train"]["epochs"] + 1
    assert json.loads((copy / "run.json").read_text())["split"]["kind"] == "leave-one-out"


def test_a_config_given_to_resume_may_change_the_budget(trained, tmp_path):
    _, data, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps({**TINY, "train": {**TINY["train"], "epochs": TINY["train"]["epochs"] + 1}}))
    result = invoke("train", "--dataset", data, "--out", copy, "--config", longer, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "config.json").read_text())["train"]["epochs"] == TINY["train"]["epochs"] + 1


def test_a_config_given_to_resume_lies_over_the_run_s_own_config_not_the_preset(trained, tmp_path):
    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = json.loads((copy / "config.json").read_text())
    patience = tmp_path / "patience.json"  # no epochs, no model: those stay the run's, not the preset's
    patience.write_text(json.dumps({"train": {"patience": 9}}))
    result = invoke("train", "--out", copy, "--config", patience, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "config.json").read_text()) == {**before, "train": {**before["train"], "patience": 9}}
    assert len((copy / "history.jsonl").read_text().splitlines()) == before["train"]["epochs"]


@pytest.mark.parametrize("change,shown", [({"seed": 5}, "seed 0 → 5"), ({"split": "multi-target"}, "split")])
def test_a_seed_or_split_in_the_file_given_to_resume_is_refused_naming_the_file(trained, tmp_path, change, shown):
    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(change))
    one_line_error(invoke("train", "--out", copy, "--config", changed, "--resume", "--quiet"),
                   f"with {changed}", shown)


def test_resume_for_fewer_epochs_than_trained_is_refused(trained, tmp_path):
    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    one_line_error(invoke("train", "--out", copy, "--resume", "--epochs", 1, "--quiet"),
                   "for 1 epochs: it has trained 2 already", "--epochs 3")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_an_old_run_with_a_relative_dataset_asks_for_the_path_instead_of_guessing(trained, tmp_path, monkeypatch):
    _, data, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "dataset": data.name}))
    (copy / "run.json").unlink()  # unfinished, so no run.json records the absolute path
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--out", copy, "--resume", "--quiet"), "relative to the folder", "--dataset")
    resumed = invoke("train", "--out", copy, "--resume", "--dataset", data, "--quiet")  # as the line asks
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((copy / "config.json").read_text())["dataset"] == str(data.resolve())


def test_a_budget_file_s_epochs_reach_a_tiger_config_s_own_epochs_on_resume(tmp_path):
    from sparcode.commands.train import _resumed
    from sparcode.presets import run_config

    recorded = run_config("tiger", "beauty", "leave-one-out", {"tiger": {"epochs": 2}})
    cfg = _resumed(tmp_path, recorded, {"train": {"epochs": 4}}, tmp_path / "budget.json", "tiger", "beauty",
                   "leave-one-out", 0, None)
    assert cfg.train.epochs == 4 and cfg.tiger["epochs"] == 4


def test_the_epochs_flag_reaches_a_tiger_config_s_own_epochs():
    from sparcode.presets import run_config

    cfg = run_config("tiger", "beauty", "leave-one-out", {"tiger": {"epochs": 2}}, epochs=4)
    assert cfg.train.epochs == 4 and cfg.tiger["epochs"] == 4


def test_a_resumed_run_is_unfinished_until_it_finishes_again(trained, tmp_path, monkeypatch):
    from sparcode.config import RunConfig
    from sparcode.encoder import checkpoint
    from sparcode.training import train_run

    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def ctrl_c_at_the_first_checkpoint(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "atomic_torch_save", ctrl_c_at_the_first_checkpoint)
    more = RunConfig.load(copy / "config.json")
    more.train.epochs += 1
    with pytest.raises(KeyboardInterrupt):
        train_run(copy, more, resume=True, progress=False)
    assert not (copy / "run.json").exists()
    one_line_error(invoke("export", copy, "--out", tmp_path / "export"), "has not finished training")


def test_resume_from_another_folder_with_a_same_named_dataset_is_refused(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    make_dataset(first / "data")
    make_dataset(second / "data", seed=1)
    monkeypatch.chdir(first)
    assert invoke("train", "--model", "ease", "--dataset", "data", "--out", tmp_path / "run").exit_code == 0
    monkeypatch.chdir(second)
    one_line_error(invoke("train", "--model", "ease", "--dataset", "data", "--out", tmp_path / "run", "--resume"),
                   "cannot resume", "trained with dataset")


def test_reordered_lines_are_a_changed_dataset(tmp_path):
    data = make_dataset(tmp_path / "data")
    assert invoke("train", "--model", "ease", "--dataset", data, "--out", tmp_path / "ease").exit_code == 0
    sequences = data / "sequences.txt"
    lines = sequences.read_text().splitlines()
    sequences.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same counts, items renumbered
    one_line_error(invoke("evaluate", tmp_path / "ease"), "has changed since", "ids, sequences or features")


def test_weights_of_another_model_are_one_line(trained, tmp_path):
    import torch

    _, _, _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = torch.load(copy / "weights.pt", weights_only=True)
    name = next(iter(weights))
    weights[name] = torch.zeros(*[n + 1 for n in weights[name].shape])
    torch.save(weights, copy / "weights.pt")
    one_line_error(invoke("evaluate", copy), "weights.pt does not fit the model config.json describes")


@pytest.mark.parametrize("args", [
    ["search", "--user", "u0", "--backend", "local"],
    ["search", "--user", "u0", "--backend", "exact"],
    ["evaluate"],
    ["evaluate", "--backend", "hnsw"],
])
def test_url_to_a_backend_without_a_node_is_a_usage_error(args, tmp_path):
    """--url given where no node is opened would be ignored silently; it is refused instead."""
    run = tmp_path / "run"
    run.mkdir()
    result = invoke(args[0], *(["--run", run] if args[0] == "search" else [run]), *args[1:], "--url", "http://x:1")
    assert result.exit_code == 2 and "--url applies to --backend es, opensearch, es-knn" in result.output


@pytest.mark.parametrize("args", [
    ["search", "--user", "u0", "--backend", "local"],
    ["search", "--user", "u0"],  # the default without ELASTICSEARCH_URL is in-process too
    ["evaluate", "--backend", "local"],
])
def test_alias_to_an_in_process_backend_is_a_usage_error(args, trained, monkeypatch):  # noqa: F811
    """An ignored --alias would pass the embedded backend's answer off as the node's."""
    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    run = trained[3]
    result = invoke(args[0], *(["--run", run] if args[0] == "search" else [run]), *args[1:], "--alias", "sc-live")
    assert result.exit_code == 2 and "--alias names an index on a node; --backend local" in result.output


def test_a_diverging_run_stops_at_the_step_in_one_line_and_leaves_no_folder(trained, tmp_path):  # noqa: F811
    root, data, _, _ = trained
    cfg = tmp_path / "hot.json"
    cfg.write_text(json.dumps({**TINY, "train": {**TINY["train"], "lr": 1e30, "grad_clip": 0}}))
    out = tmp_path / "run"
    result = invoke("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", out,
                    "--config", cfg, "--quiet")
    one_line_error(result, "training diverged: the loss is", "lower train.lr (now 1e+30) or set train.grad_clip")
    assert not out.exists()  # nothing a retry would trip over


def test_a_failure_in_a_resumed_run_keeps_its_folder_and_is_one_line(trained, tmp_path, monkeypatch):  # noqa: F811
    """Only a folder this invocation made, holding no checkpoint, is removed on failure."""
    import sparcode.encoder.train as training

    root, data, cfg, _ = trained
    out = tmp_path / "run"
    args = ("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", out, "--quiet")
    assert invoke(*args, "--config", cfg, "--epochs", 1).exit_code == 0
    before = sorted(p.name for p in out.iterdir())

    def allocator(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 2560000000000 bytes.\nmore detail")

    monkeypatch.setattr(training, "build_model", allocator)
    result = invoke(*args, "--resume", "--epochs", 2)
    one_line_error(result, "out of memory:", "can't allocate memory")
    assert sorted(p.name for p in out.iterdir()) == before


def test_sigterm_before_the_first_checkpoint_leaves_no_folder(trained, tmp_path, monkeypatch):  # noqa: F811
    """kill or a scheduler's time limit ends a fresh run as Ctrl-C does, instead of leaving a
    config-only folder that the next `train` into it refuses."""
    import os
    import signal
    import time

    import sparcode.encoder.train as training

    root, data, cfg, _ = trained
    real = training.build_model

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "build_model", terminated)
    out = tmp_path / "run"
    result = invoke("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", out,
                    "--config", cfg, "--quiet")
    one_line_error(result, "interrupted before the first epoch finished; nothing was kept")
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_missing_dependency_is_one_line_naming_what_to_install():
    import click

    from sparcode.commands._common import user_errors

    with pytest.raises(click.ClickException) as info:
        with user_errors():
            raise ModuleNotFoundError("No module named 'opensearchpy'", name="opensearchpy")
    assert "needs the Python package 'opensearchpy'" in info.value.message
    assert "pip install opensearch-py" in info.value.message
    with pytest.raises(ModuleNotFoundError):  # one of sparcode's own modules missing is a bug: its traceback stays
        with user_errors():
            raise ModuleNotFoundError("No module named 'sparcode.nothing'", name="sparcode.nothing")
