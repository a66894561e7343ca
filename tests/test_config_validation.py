"""A config value of the wrong type or range, a config that contradicts a CLI flag, and a
--resume onto another dataset all end in one clear line, before anything is written."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.config import ConfigError, RunConfig, read_config_file
from sparcode.generative.config import TigerConfig

TINY = {
    "model": {"dim": 16, "codebooks": 2, "codes": 8, "user_tokens": 2, "scorer_hidden": 8, "tokenizer": "dnn",
              "kmeans_iters": 3},
    "train": {"epochs": 1, "batch_size": 64, "negatives": 16, "patience": 5, "max_history": 5, "threads": 1},
}


def write_dataset(path, users=60, items=30, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(items, size=6, replace=False)) for u in range(users)]
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- the loader ---------------------------------------------------------------------------------

TYPE_ERRORS = [
    ({"train": {"epochs": "one"}}, "train.epochs must be an integer, got 'one'"),
    ({"train": {"epochs": 1.5}}, "train.epochs must be an integer, got 1.5"),
    ({"train": {"epochs": True}}, "train.epochs must be an integer"),
    ({"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
    ({"train": {"bf16": "no"}}, "train.bf16 must be true or false, got 'no'"),
    ({"model": {"codes": "256"}}, "model.codes must be an integer, got '256'"),
    ({"model": {"ease_lambda": 100}}, "model.ease_lambda must be a list of numbers, got 100"),
    ({"model": {"ease_lambda": [1, "x"]}}, "model.ease_lambda[1] must be a number"),
    ({"model": {"dead_code_threshold": "low"}}, "model.dead_code_threshold must be a number"),
    ({"serve": {"max_postings": 2.5}}, "serve.max_postings must be an integer"),
    ({"serve": {"max_codes": 1e5}}, "serve.max_codes must be an integer"),
    ({"seed": "0"}, "seed must be an integer"),
    ({"tiger": [1]}, "tiger must be an object"),
    ({"train": [1]}, "config.train: expected an object"),
]


@pytest.mark.parametrize("data,message", TYPE_ERRORS)
def test_wrong_types_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    assert message in str(info.value)


RANGE_ERRORS = [
    ({"train": {"epochs": -1}}, "train.epochs must be ≥ 1"),
    ({"train": {"epochs": 0}}, "train.epochs must be ≥ 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be ≥ 1"),
    ({"train": {"lr": 0}}, "train.lr must be > 0"),
    ({"train": {"window_fraction": 0}}, "train.window_fraction must be in (0, 1]"),
    ({"train": {"future_targets": 0}}, "train.future_targets must be ≥ 1"),
    ({"train": {"select_metric": "foo@7"}}, "train.select_metric must be one of"),
    ({"model": {"codebooks": 0}}, "model.codebooks must be in [1, 64], got 0"),
    ({"model": {"codes": 0}}, "model.codes must be in [1, 10000], got 0"),
    # Five-digit codes have no pseudo-term; a huge size fails in the allocator, not in a message.
    ({"model": {"codes": 10001}}, "model.codes must be in [1, 10000], got 10001"),
    ({"model": {"codes": 10_000_000_000}}, "model.codes must be in [1, 10000]"),
    ({"model": {"user_tokens": 100_000}}, "model.user_tokens must be in [1, 256]"),
    ({"serve": {"max_codes": 0}}, "serve.max_codes must be ≥ 1"),
    ({"model": {"dim": 0}}, "model.dim must be in [1, 4096], got 0"),
    ({"model": {"dim": 18}}, "model.dim must be divisible by 4"),
    ({"model": {"dropout": 1}}, "model.dropout must be in [0, 1)"),
    ({"model": {"ease_lambda": []}}, "model.ease_lambda must be a non-empty list of positive numbers"),
    ({"model": {"ease_lambda": [10, -1]}}, "model.ease_lambda must be a non-empty list of positive numbers"),
    ({"seed": -1}, "seed must be in [0, 2**32 - 1], got -1"),
    ({"seed": 2**32}, "seed must be in [0, 2**32 - 1], got 4294967296"),
    ({"split": "random"}, "split must be one of"),
]


@pytest.mark.parametrize("data,message", RANGE_ERRORS)
def test_values_that_break_training_are_refused(data, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data).validate()
    assert message in str(info.value)


def test_good_values_pass_and_json_ints_stand_for_floats():
    cfg = RunConfig.from_dict({"train": {"lr": 1, "bf16": False}, "model": {"ease_lambda": [10, 2.5]},
                               "serve": {"bias": None, "max_postings": 100}}).validate()
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.ease_lambda == [10.0, 2.5] and cfg.train.bf16 is False
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).validate()  # a saved config loads back
    assert again == cfg


def test_a_config_file_must_hold_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="expected a JSON object"):
        RunConfig.load(path)


@pytest.mark.parametrize("tiger,message", [
    ({"epochs": "3"}, "tiger.epochs must be an integer"),
    ({"lr": 0}, "tiger.lr must be > 0"),
    ({"rqvae": {"hidden": [64, "a"]}}, "tiger.rqvae.hidden[1] must be an integer"),
    ({"d_model": 10, "heads": 4}, "divisible by tiger.heads"),
])
def test_tiger_keys_are_checked_too(tiger, message):
    with pytest.raises(ConfigError) as info:
        TigerConfig.from_run_config(RunConfig.from_dict({"model": {"kind": "tiger"}, "tiger": tiger}))
    assert message in str(info.value)


# --- the train command ----------------------------------------------------------------------------

@pytest.mark.parametrize("config,message", [
    ({"train": {"epochs": "one"}}, "train.epochs must be an integer, got 'one'"),
    ({"train": {"epochs": -1}}, "train.epochs must be ≥ 1, got -1"),
    ({"train": {"bf16": "no"}}, "train.bf16 must be true or false"),
    ({"train": {"select_metric": "foo@7"}}, "train.select_metric must be one of"),
    ({"model": {"codes": "256"}}, "model.codes must be an integer"),
    ([1, 2], "expected a JSON object"),
    # A TIGER section is checked whatever the model: a config file shared by all models would
    # otherwise carry a mistyped TIGER key silently until TIGER is trained with it.
    ({"serve": {"stored_fraction": 0.6}}, "per-code allocation stores at most about 0.5"),
    ({"tiger": {"nonsense": 1}}, "unknown TIGER config key(s) nonsense"),
    ({"tiger": {"epochs": "x"}}, "tiger.epochs must be an integer"),
    ({"tiger": {"dataset": "beauty"}}, "tiger.dataset 'beauty' is not the run's dataset"),
])
def test_train_refuses_bad_values_in_one_line_and_writes_nothing(tmp_path, config, message):
    data = write_dataset(tmp_path / "seq.txt")
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    result = invoke("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out",
                    "--out", tmp_path / "run", "--config", tmp_path / "cfg.json", "--quiet")
    one_line_error(result, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", [{"model": {"ease_lambda": 100}}, {"model": {"ease_lambda": []}}])
def test_ease_lambda_is_checked_before_fitting(tmp_path, config):
    data = write_dataset(tmp_path / "seq.txt")
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    result = invoke("train", "--model", "ease", "--dataset", data, "--split", "leave-one-out",
                    "--out", tmp_path / "run", "--config", tmp_path / "cfg.json", "--quiet")
    one_line_error(result, "model.ease_lambda")
    assert not (tmp_path / "run").exists()


def test_epochs_flag_is_range_checked(tmp_path):
    data = write_dataset(tmp_path / "seq.txt")
    result = invoke("train", "--dataset", data, "--out", tmp_path / "run", "--epochs", -1, "--quiet")
    assert result.exit_code == 2 and "x>=1" in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config,flags,names", [
    ({"dataset": "ml-1m"}, ["--model", "sparcode"], ["dataset 'ml-1m'", "--dataset is"]),
    ({"model": {"kind": "ease"}}, ["--model", "sparcode"], ["model.kind 'ease'", "--model is 'sparcode'"]),
    ({"split": "multi-target"}, ["--split", "leave-one-out"], ["split 'multi-target'", "--split is 'leave-one-out'"]),
])
def test_a_config_contradicting_an_explicit_flag_is_an_error(tmp_path, config, flags, names):
    data = write_dataset(tmp_path / "seq.txt")
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    result = invoke("train", "--dataset", data, *flags, "--out", tmp_path / "run", "--config", tmp_path / "cfg.json")
    one_line_error(result, *names)
    assert not (tmp_path / "run").exists()


def test_agreeing_config_and_flags_train_and_defaults_follow_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "seq.txt")
    agree = tmp_path / "agree.json"
    agree.write_text(json.dumps({"dataset": "./seq.txt", "split": "leave-one-out", "model": {"kind": "ease"}}))
    result = invoke("train", "--model", "ease", "--dataset", "seq.txt", "--split", "leave-one-out",
                    "--out", "run1", "--config", agree, "--quiet")
    assert result.exit_code == 0, result.output
    # No --model/--dataset given: the file's values are used, not the flags' defaults.
    result = invoke("train", "--out", "run2", "--config", agree, "--quiet")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run2" / "run.json").read_text())
    # Recorded absolute, so the run (finished or not) opens and resumes from any folder.
    assert info["model"] == "ease" and info["dataset"] == str((tmp_path / "seq.txt").resolve())


@pytest.fixture
def trained_run(tmp_path):
    data = write_dataset(tmp_path / "seq.txt")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    result = invoke("train", "--dataset", data, "--split", "leave-one-out", "--out", run, "--config", cfg, "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path, data, cfg, run


def snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_resume_onto_another_dataset_is_refused_naming_both(trained_run):
    root, data, cfg, run = trained_run
    other = write_dataset(root / "other.txt", users=40, items=50, seed=1)
    before = snapshot(run)
    result = invoke("train", "--dataset", other, "--split", "leave-one-out", "--out", run, "--config", cfg,
                    "--resume", "--quiet")
    one_line_error(result, "cannot resume", str(data), str(other))
    assert snapshot(run) == before


def test_resume_after_the_dataset_file_changed_is_one_line(trained_run):
    root, data, cfg, run = trained_run
    write_dataset(data, users=60, items=45, seed=2)  # same path, larger catalog
    (run / "run.json").unlink()  # an interrupted run
    result = invoke("train", "--dataset", data, "--split", "leave-one-out", "--out", run, "--config", cfg,
                    "--resume", "--quiet")
    one_line_error(result, "cannot resume", "shape")


@pytest.mark.timeout(30)  # reading this FIFO twice blocks for good
def test_a_config_that_can_be_read_only_once_is_read_once(tmp_path):
    """`--config <(…)` or `--config /dev/stdin`: a pipe. A second read of `<(…)` got nothing, and
    the run failed with "not valid JSON" about a valid file."""
    import os
    import threading

    data = write_dataset(tmp_path / "seq.txt")
    pipe = tmp_path / "config.pipe"
    os.mkfifo(pipe)

    def write_once():
        with open(pipe, "w") as fh:
            fh.write(json.dumps({"train": {"epochs": -3}}))

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    result = invoke("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out",
                    "--out", tmp_path / "run", "--config", pipe, "--quiet")
    writer.join(timeout=5)
    one_line_error(result, "train.epochs must be ≥ 1, got -3")
    assert not (tmp_path / "run").exists()


def test_a_retired_key_older_runs_recorded_still_loads_and_means_nothing():
    from sparcode.config import RunConfig

    old = RunConfig().to_dict()
    assert "feature_dim" not in old["model"]
    old["model"]["feature_dim"] = 16  # as every run before its removal recorded it
    assert RunConfig.from_dict(old) == RunConfig()


def test_show_config_prints_a_config_train_takes_back_and_trains_nothing(tmp_path):
    data = write_dataset(tmp_path / "seq.txt")
    (tmp_path / "cfg.json").write_text(json.dumps({"train": {"epochs": 3}}))
    shown = invoke("train", "--dataset", data, "--config", tmp_path / "cfg.json", "--seed", 7, "--show-config")
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.stdout)
    assert config["train"]["epochs"] == 3 and config["seed"] == 7 and config["dataset"] == str(data)
    assert config["model"]["kind"] == "sparcode" and config["split"] == "leave-one-out"
    # Fed back as --config it is the same config: the printout is a complete, valid file.
    (tmp_path / "shown.json").write_text(shown.output)
    again = invoke("train", "--dataset", data, "--config", tmp_path / "shown.json", "--show-config")
    assert again.exit_code == 0 and json.loads(again.stdout) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "seq.txt", "shown.json"]  # no run folder
    tiger = json.loads(invoke("train", "--model", "tiger", "--dataset", data, "--show-config").output)
    assert tiger["tiger"]["beam_size"] >= 1 and "rqvae" in tiger["tiger"]  # TIGER's own defaults, shown in full
    # ...but not the keys it follows from train.*: an edited copy's train.epochs must still count.
    assert "epochs" not in tiger["tiger"] and "seed" not in tiger["tiger"]["rqvae"]
    (tmp_path / "tiger.json").write_text(json.dumps({**tiger, "train": {**tiger["train"], "epochs": 4}}))
    edited = json.loads(invoke("train", "--dataset", data, "--config", tmp_path / "tiger.json", "--show-config").output)
    from sparcode.generative.config import TigerConfig

    assert TigerConfig.from_run_config(RunConfig.from_dict(edited)).epochs == 4
    missing = invoke("train", "--dataset", data)
    assert missing.exit_code == 2 and "Missing option '--out'" in missing.output
