"""The scripts under scripts/, run as a user runs them (a subprocess with the project's python) on
tiny runs and exports: bad input is one line and a non-zero exit before any work, outputs are
never mixed into or written over what they read, and compare_models keeps the rows it did not
measure."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_items, write_export
from sparcode.config import RunConfig
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.models import build_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def script(name: str, *args, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The script failed with one line naming `words`, and no traceback."""
    assert done.returncode not in (0, None), done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, done.stderr
    return last


def tiny_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(60, 8, replace=False)) for u in range(40)]
    data = root / "sequences.txt"
    data.write_text("\n".join(lines) + "\n")
    return data


def fake_run(root: Path, kind: str, data: Path) -> Path:
    """A run folder as `sparcode train --model KIND` leaves it, untrained: the scripts must judge
    it by what it is before they do any work with it."""
    cfg = RunConfig.from_dict({
        "dataset": str(data), "split": "leave-one-out",
        "model": {"kind": kind, "dim": 8, "codebooks": 2, "codes": 4, "user_tokens": 2, "scorer_hidden": 4,
                  "tokenizer": "dnn", "kmeans_iters": 2},
        "train": {"max_history": 5}, "serve": {"stored_fraction": 0.3},
    }).validate()
    run = root / kind
    run.mkdir(parents=True)
    cfg.save(run / ckpt.CONFIG)
    if kind not in ("ease", "tiger"):
        from sparcode.data.readers import load_dataset
        from sparcode.data.splits import make_split

        dataset = load_dataset(data)
        split = make_split(dataset, cfg.split, seed=cfg.seed, max_history=cfg.train.max_history)
        torch.manual_seed(0)
        model = build_model(cfg.model, dataset, split.max_history)
        if kind == "sparcode":  # k-means initialises the codebooks on a first batch
            model.train()
            model.user_tokens(torch.as_tensor(split.train.users[:64]), torch.as_tensor(split.train.histories[:64]))
        torch.save(model.state_dict(), run / ckpt.WEIGHTS)
    ckpt.write_json(run / ckpt.RUN_INFO, {"dataset_path": str(data)})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = tiny_data(root)
    return {kind: fake_run(root, kind, data) for kind in ("sparcode", "all-to-all", "two-tower", "ease", "tiger")}


# --- item 9: one line for a run the script cannot use, and --out checked before the work ---

@pytest.mark.parametrize("kind", ["missing", "two-tower", "ease", "all-to-all"])
def test_serving_sweep_refuses_a_run_it_cannot_sweep_in_one_line(runs, tmp_path, kind):
    run = tmp_path / "nothing" if kind == "missing" else runs[kind]
    done = script("serving_sweep.py", run, "--out", tmp_path / "sweep.json")
    refused(done, str(run), "not a sparcode run" if kind == "missing" else f"is a {kind} run")
    assert not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize("name", ["serving_sweep.py", "ease_hybrid.py"])
def test_out_in_a_missing_folder_is_refused_before_the_work(runs, tmp_path, name):
    out = tmp_path / "no-such-folder" / "result.json"
    started = time.perf_counter()
    done = script(name, runs["sparcode"], "--out", out)
    refused(done, str(out.parent), "does not exist")
    assert time.perf_counter() - started < 60


def test_ease_hybrid_refuses_an_ease_run(runs, tmp_path):
    refused(script("ease_hybrid.py", runs["ease"], "--out", tmp_path / "h.json"), "is a ease run")


def test_posthoc_quantization_refuses_bad_sources_in_one_line(runs, tmp_path):
    refused(script("posthoc_quantization.py", tmp_path / "nothing", tmp_path / "target"), "not a sparcode run")
    refused(script("posthoc_quantization.py", runs["two-tower"], "--measure-only"), "is a two-tower run")
    refused(script("posthoc_quantization.py", runs["sparcode"], tmp_path / "target"), "starts from an all-to-all")
    assert not (tmp_path / "target").exists()


def test_posthoc_quantization_never_writes_into_a_folder_that_holds_files(runs, tmp_path):
    """TARGET holding another run (or anything) is left exactly as it was, like `train --out`."""
    target = tmp_path / "victim"
    target.mkdir()
    (target / "config.json").write_text("{}\n")
    (target / "notes.txt").write_text("mine\n")
    done = script("posthoc_quantization.py", runs["all-to-all"], target, "--windows", "50", "--iters", "1")
    refused(done, str(target), "pick a new or empty folder")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "notes.txt"]
    assert (target / "config.json").read_text() == "{}\n"


def test_tiger_prefix_check_refuses_a_run_that_is_not_tiger(runs):
    refused(script("tiger_prefix_check.py", runs["ease"], "--alias", "whatever"), "is a ease run")


def test_tiger_prefix_check_names_an_unknown_alias_in_one_line(runs, es_engine):
    alias = "sparcode-test-no-such-alias-7f3a"
    refused(script("tiger_prefix_check.py", runs["tiger"], "--alias", alias), alias)


def test_knn_sweep_refuses_candidates_below_k_instead_of_mislabelling_rows(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "knn_candidates_sweep.py"), "--candidates", "10,100",
                           "--out", str(tmp_path / "k.json"), "--url", "http://127.0.0.1:9"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "at least k = 50" in done.stderr and "Traceback" not in done.stderr


# --- items 5 and 6: cap_export ---

@pytest.fixture
def export(tmp_path) -> Path:
    return write_export(tmp_path / "exp", random_items(n_items=120, n_terms=20))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cap_export_refuses_to_write_over_the_export_it_reads(export, tmp_path):
    before = snapshot(export)
    refused(script("cap_export.py", export, export, "--max-postings", "2"), "the export being read")
    refused(script("cap_export.py", export, export / ".." / "exp", "--max-postings", "2", "--force"),
            "the export being read")
    refused(script("cap_export.py", export, tmp_path, "--max-postings", "2", "--force"), "the export being read")
    assert snapshot(export) == before


@pytest.mark.parametrize("cap", ["0", "-1"])
def test_cap_export_refuses_a_cap_below_one(export, tmp_path, cap):
    done = script("cap_export.py", export, tmp_path / "capped", "--max-postings", cap)
    assert done.returncode == 2 and "at least 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "capped").exists()


def test_cap_export_replaces_an_earlier_export_only_with_force_and_whole(export, tmp_path):
    out = tmp_path / "capped"
    assert script("cap_export.py", export, out, "--max-postings", "3").returncode == 0
    first = snapshot(out)
    refused(script("cap_export.py", export, out, "--max-postings", "1"), "--force")
    assert snapshot(out) == first
    assert script("cap_export.py", export, out, "--max-postings", "1", "--force").returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    lines = gzip.decompress((out / "items.jsonl.gz").read_bytes()).splitlines()
    assert manifest["max_postings"] == 1 and manifest["postings_per_code"]["max"] == 1
    assert manifest["pairs"] == sum(len(json.loads(line)["codes"]) for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capped", "exp"]  # no staging left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    refused(script("cap_export.py", export, tmp_path / "mine", "--max-postings", "1", "--force"), "not an export")


# --- item 8: tiger_training_curve --evaluate-best marks run.json's best epoch ---

def test_training_curve_marks_the_epoch_training_kept(tmp_path, monkeypatch):
    """Selected on N@5, the kept epoch (run.json's best_epoch) is not the epoch of the best R@10."""
    import importlib.util

    from click.testing import CliRunner

    import sparcode.encoder.runs as runs_module
    import sparcode.generative.train_tiger as train_tiger

    run = tmp_path / "tiger-run"
    (run / "tiger").mkdir(parents=True)
    history = [{"epoch": e, "train_seconds": 60.0 * e, "valid_recall@5": r5, "valid_ndcg@5": n5,
                "valid_recall@10": r10, "valid_ndcg@10": n5}
               for e, r5, n5, r10 in ((1, 0.1, 0.30, 0.2), (2, 0.1, 0.10, 0.5), (3, 0.1, 0.20, 0.3))]
    (run / "tiger" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (run / "tiger" / "config.json").write_text(json.dumps({"dataset": "toy", "select_on": "ndcg@5"}))
    info = {"best_epoch": 1, "select_on": "ndcg@5"}

    class FakeRun:
        path, dataset, split = run, None, None

    FakeRun.info = info
    monkeypatch.setattr(runs_module, "open_run", lambda path: FakeRun)
    monkeypatch.setattr(train_tiger, "validation_metrics", lambda *a, **k: {"recall@5": 0.1, "ndcg@10": 0.3})
    spec = importlib.util.spec_from_file_location("tiger_training_curve", SCRIPTS / "tiger_training_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = CliRunner().invoke(module.main, [str(run), "--out", str(tmp_path / "out"), "--evaluate-best"])
    assert result.exit_code == 0, result.output
    best = json.loads((tmp_path / "out" / "training_curve.json").read_text())["best_checkpoint"]
    assert best["epoch"] == 1 and best["minutes"] == 1.0

    info.pop("best_epoch")  # a run.json from before best_epoch was recorded: training's rule on select_on
    result = CliRunner().invoke(module.main, [str(run), "--out", str(tmp_path / "out"), "--evaluate-best"])
    assert json.loads((tmp_path / "out" / "training_curve.json").read_text())["best_checkpoint"]["epoch"] == 1


# --- items 1-4 and Ctrl-C: compare_models ---

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One EASE comparison on a tiny dataset, run from another folder with relative paths."""
    root = tmp_path_factory.mktemp("compare")
    tiny_data(root)
    (root / "cfg").mkdir()
    (root / "cfg" / "ease.json").write_text(json.dumps({"model": {"ease_lambda": [100.0]}}))
    done = script("compare_models.py", "--dataset", "sequences.txt", "--split", "leave-one-out", "--models", "ease",
                  "--runs-dir", "runs", "--out", "out", "--config-dir", "cfg", cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def compare(root: Path, *args, out="out") -> subprocess.CompletedProcess:
    return script("compare_models.py", "--dataset", "sequences.txt", "--split", "leave-one-out", "--models", "ease",
                  "--runs-dir", "runs", "--out", out, *args, cwd=root)


def test_compare_models_resolves_relative_paths_and_records_seed_and_config(compared):
    assert (compared / "runs" / "ease" / "run.json").is_file()
    rows = json.loads((compared / "out" / "results.json").read_text())
    assert [row["model"] for row in rows] == ["ease"]
    assert rows[0]["seed"] == 0 and rows[0]["config"] == str(compared / "cfg" / "ease.json")
    assert rows[0]["metrics"]["lambda"] == 100.0  # the override was trained with, from another cwd
    assert "| stored fraction |" in (compared / "out" / "table.md").read_text()


def test_compare_models_merges_into_existing_results_by_model(compared):
    out = compared / "merged"
    out.mkdir()
    metrics = {f"{m}@{k}": 0.5 for m in ("recall", "ndcg", "hr") for k in (5, 10)}
    old = [{"model": "sparcode", "seed": 0, "train_seconds": 60, "metrics": {**metrics, "stored_fraction": 0.05}},
           {"model": "ease", "seed": 0, "train_seconds": 60, "metrics": {**metrics, "lambda": 3000.0}}]
    (out / "results.json").write_text(json.dumps(old))
    done = compare(compared, "--config-dir", "cfg", out="merged")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept the rows of sparcode" in done.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in rows] == ["sparcode", "ease"]
    assert rows[0] == old[0] and rows[1]["metrics"]["lambda"] == 100.0
    table = (out / "table.md").read_text()
    assert "| sparcode |" in table and "| ease |" in table
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "table.md"]
    assert (rows[1]["split"], rows[1]["seed"]) == ("leave-one-out", 0)


@pytest.mark.parametrize("recorded, named", [({"split": "multi-target"}, "split multi-target"),
                                             ({"seed": 1}, "seed 1"),
                                             ({"metrics": {"dataset": "ml-1m"}}, "dataset ml-1m")])
def test_compare_models_never_mixes_protocols_in_one_table(compared, recorded, named):
    out = compared / f"mixed-{named.split()[0]}"
    out.mkdir()
    old = [{"model": "sparcode", "seed": 0, "train_seconds": 60, "metrics": {}, **recorded}]
    (out / "results.json").write_text(json.dumps(old))
    refused(compare(compared, "--config-dir", "cfg", out=out.name), named, "another --out")
    assert json.loads((out / "results.json").read_text()) == old


def test_compare_models_refuses_a_finished_run_of_another_seed_or_config(compared):
    before = (compared / "out" / "results.json").read_bytes()
    refused(compare(compared, "--seed", "1", "--config-dir", "cfg"), "seed 0", "--runs-dir")
    refused(compare(compared), "model.ease_lambda", "--runs-dir")  # trained with the override, asked without
    (compared / "other").mkdir(exist_ok=True)
    (compared / "other" / "ease.json").write_text(json.dumps({"model": {"ease_lambda": [300.0]}}))
    refused(compare(compared, "--config-dir", "other"), "model.ease_lambda")
    assert (compared / "out" / "results.json").read_bytes() == before


def test_compare_models_refuses_a_config_dir_it_cannot_use(compared, tmp_path):
    refused(compare(tmp_path, "--config-dir", "no-such-dir"), "no-such-dir", "not a folder")
    (tmp_path / "empty").mkdir()
    refused(compare(tmp_path, "--config-dir", "empty"), "ease.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no runs, no results


def test_compare_models_ctrl_c_is_one_line_and_exit_130(tmp_path):
    tiny_data(tmp_path)
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "compare_models.py"), "--dataset", "sequences.txt",
                             "--split", "leave-one-out", "--models", "ease", "--runs-dir", "runs", "--out", "out"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    time.sleep(2.5)  # inside the first `sparcode train`, which takes longer than that to import torch
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resumes" in stderr.strip().splitlines()[-1]
    assert 'compare_models.py", line' not in stderr  # no traceback of the script's own
    assert not (tmp_path / "out" / "results.json").exists()


# --- item 10: setup.sh installs nothing when .venv already holds this pyproject.toml's install ---

def fake_checkout(root: Path, version: str = "") -> Path:
    """scripts/setup.sh beside a pyproject.toml, and a .venv whose python records every pip call
    and fails it (no index is reached, nothing is installed anywhere) but runs anything else.
    With `version`, the python claims to be that version and fails everything else."""
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "setup.sh").write_bytes((SCRIPTS / "setup.sh").read_bytes())
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (root / ".venv" / "bin").mkdir(parents=True)
    python = root / ".venv" / "bin" / "python"
    if version:
        python.write_text(f'#!/bin/sh\n[ "$1" = -V ] && echo "Python {version}" && exit 0\nexit 1\n')
    else:
        # `pip check` (offline) passes unless a file `broken` says a requirement went missing.
        python.write_text(f'#!/bin/sh\nif [ "$3" = check ]; then [ ! -e "{root}/broken" ]; exit $?; fi\n'
                          f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$*" >> "{root}/pip-calls"; exit 1; fi\n'
                          f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return root


def setup(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)


def test_setup_skips_pip_for_a_finished_install_and_never_stamps_a_failed_one(tmp_path):
    import hashlib

    root = fake_checkout(tmp_path / "repo")
    stamp = root / ".venv" / ".sparcode-installed"
    stamp.write_text(hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest() + "\n")
    done = setup(root)
    assert done.returncode == 0, done.stderr
    assert not (root / "pip-calls").exists()  # offline-safe: no pip install at all

    (root / "broken").touch()  # a requirement uninstalled since: the stamp alone does not vouch
    assert setup(root).returncode != 0 and "install" in (root / "pip-calls").read_text()
    (root / "broken").unlink()
    (root / "pip-calls").unlink()
    stamp.write_text(hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest() + "\n")

    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')  # a changed project installs
    assert setup(root).returncode != 0
    assert "install" in (root / "pip-calls").read_text()
    assert not stamp.exists()  # the failed install left nothing that vouches for .venv
    assert setup(root).returncode != 0  # and the next run tries again


def test_setup_refuses_a_venv_older_than_python_3_11(tmp_path):
    root = fake_checkout(tmp_path / "repo", version="3.10.12")
    done = setup(root)
    assert done.returncode != 0 and "3.10.12" in done.stderr and "3.11" in done.stderr
