"""`export --max-postings N` / `serve.max_postings` on a real (tiny, untrained) SparCode run:
every code keeps its N best stored postings, and a cap nobody reaches changes nothing."""
import gzip

import numpy as np
import pytest
import torch

from sparcode.config import RunConfig
from sparcode.data.readers import load_dataset
from sparcode.data.splits import make_split
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder import export as encoder_export
from sparcode.encoder.models import build_model
from sparcode.encoder.runs import RunError, open_run
from sparcode.pipeline.export import Export


def tiny_run(root, allocation: str):
    """A run directory as `sparcode train` leaves it, without the seconds of training: export
    only needs the config, the weights and the dataset, and k-means-initialised codebooks
    already give users distinct codes."""
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(60, 8, replace=False)) for u in range(40)]
    data = root / "sequences.txt"
    data.write_text("\n".join(lines) + "\n")
    cfg = RunConfig.from_dict({
        "dataset": str(data), "split": "leave-one-out",
        "model": {"dim": 8, "codebooks": 2, "codes": 4, "user_tokens": 2, "scorer_hidden": 4, "tokenizer": "dnn",
                  "kmeans_iters": 2, "dead_code_threshold": 2.0},
        "train": {"max_history": 5},
        "serve": {"stored_fraction": 0.3, "allocation": allocation},
    }).validate()
    dataset = load_dataset(data)
    split = make_split(dataset, cfg.split, seed=cfg.seed, max_history=cfg.train.max_history)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset, split.max_history)
    model.train()
    model.user_tokens(torch.as_tensor(split.train.users[:64]), torch.as_tensor(split.train.histories[:64]))
    run = root / "run"
    run.mkdir()
    cfg.save(run / ckpt.CONFIG)
    torch.save(model.state_dict(), run / ckpt.WEIGHTS)
    ckpt.write_json(run / ckpt.RUN_INFO, {"dataset_path": str(data)})
    return open_run(run)


def postings_by_term(path) -> dict[str, list[tuple[float, int]]]:
    """term -> [(stored score, item ord)] as the export's item files hold them."""
    out: dict[str, list[tuple[float, int]]] = {}
    for item in Export.open(path).items():
        for term, value in item["codes"].items():
            out.setdefault(term, []).append((value, int(item["ord"])))
    return {t: sorted(p, key=lambda vo: vo[1]) for t, p in out.items()}


@pytest.mark.parametrize("allocation", ["global", "per-code"])
def test_posting_cap_keeps_each_codes_best_stored_items(tmp_path, monkeypatch, allocation):
    # The GEMM ceiling is a half-second timing for the manifest; it plays no part in the postings.
    monkeypatch.setattr(encoder_export, "measure_gemm_rate", lambda model, device: 1.0)
    run = tiny_run(tmp_path, allocation)
    encoder_export.export_run(run, tmp_path / "full", progress=False)
    full = postings_by_term(tmp_path / "full")
    lengths = sorted(len(p) for p in full.values())
    assert len(full) >= 3 and lengths[-1] >= 4
    cap = max(1, lengths[-1] // 2)
    manifest = encoder_export.export_run(run, tmp_path / "capped", max_postings=cap, progress=False)
    capped = postings_by_term(tmp_path / "capped")
    assert manifest["max_postings"] == cap and manifest["postings_per_code"]["max"] <= cap
    assert set(capped) == set(full)  # a cap ≥ 1 leaves every code that had postings some
    for term, postings in full.items():
        # The cap's order: stored score, highest first, then the lower item ord.
        best = sorted(sorted(postings, key=lambda vo: (-vo[0], vo[1]))[:cap], key=lambda vo: vo[1])
        assert capped[term] == best, term
    assert sum(map(len, capped.values())) == manifest["pairs"] < sum(lengths)

    # A cap no code reaches stores exactly the uncapped export, item lines byte for byte.
    manifest = encoder_export.export_run(run, tmp_path / "loose", max_postings=lengths[-1], progress=False)
    assert postings_by_term(tmp_path / "loose") == full
    assert manifest["pairs"] == sum(lengths)
    assert gzip.decompress((tmp_path / "loose" / "items.jsonl.gz").read_bytes()) == \
        gzip.decompress((tmp_path / "full" / "items.jsonl.gz").read_bytes())


def test_serve_max_postings_is_the_default_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_export, "measure_gemm_rate", lambda model, device: 1.0)
    run = tiny_run(tmp_path, "global")
    explicit = encoder_export.export_run(run, tmp_path / "explicit", max_postings=2, progress=False)
    run.config.serve.max_postings = 2
    from_config = encoder_export.export_run(run, tmp_path / "config", progress=False)
    assert from_config["max_postings"] == 2 and from_config["postings_per_code"]["max"] == 2
    assert from_config["pairs"] == explicit["pairs"]
    assert postings_by_term(tmp_path / "config") == postings_by_term(tmp_path / "explicit")


def test_a_cap_is_refused_on_a_sharded_export_before_anything_is_written(tmp_path):
    run = tiny_run(tmp_path, "per-code")
    with pytest.raises(RunError, match="cannot be combined with --shard"):
        encoder_export.export_run(run, tmp_path / "shards", max_postings=3, shard=(0, 2), progress=False)
    run.config.serve.max_postings = 3
    with pytest.raises(RunError, match=r"serve.max_postings \(3\)"):
        encoder_export.export_run(run, tmp_path / "shards", shard=(1, 2), progress=False)
    assert not (tmp_path / "shards").exists()


def test_capping_a_merged_sharded_export_afterwards_equals_capping_while_exporting(tmp_path, monkeypatch):
    """The README's way to cap a sharded export: merge, then scripts/cap_export.py."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setattr(encoder_export, "measure_gemm_rate", lambda model, device: 1.0)
    run = tiny_run(tmp_path, "per-code")
    for index in range(2):
        encoder_export.export_run(run, tmp_path / "shards", shard=(index, 2), progress=False)
    capped_while_exporting = encoder_export.export_run(run, tmp_path / "direct", max_postings=2, progress=False)
    script = Path(__file__).resolve().parents[1] / "scripts" / "cap_export.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "shards"), str(tmp_path / "after"),
                    "--max-postings", "2"], check=True, capture_output=True)
    assert max(map(len, postings_by_term(tmp_path / "shards").values())) > 2  # the cap bites
    after = Export.open(tmp_path / "after")
    assert after.manifest["fingerprint"] == capped_while_exporting["fingerprint"]
    assert postings_by_term(tmp_path / "after") == postings_by_term(tmp_path / "direct")
