"""Per-model, per-dataset starting configurations: what `sparcode train` uses unless a
`--config` file overrides it. Each value here was chosen by a measured run (see README)."""
from __future__ import annotations

from sparcode.config import RunConfig

# SparCode and its unindexed upper bound train identically; only quantization differs.
# The scorer's cost per example is K_u x (batch + negatives) MLP evaluations. The K_u = 4
# attention tokens collapsed onto one code per user anyway (cosine 0.99999), so one token buys
# 4x the scorer per CPU-second, spent here on 256 shared negatives and 10 epochs of 0.4 of the
# windows: on ml-1m, served R@50 0.361 after 17 min alone on 2 cores, against 0.334 in 31.5 min
# for K_u = 4 with 64 negatives and 5 epochs (README). `interests` + token_diversity keeps
# several tokens apart but served worse at 5 % stored (0.327).
_ALL_TO_ALL = {
    "model": {"tokenizer": "attention", "user_tokens": 1, "item_tokens": 1, "scorer_hidden": 32},
    "train": {"batch_size": 128, "negatives": 256, "window_fraction": 0.4, "epochs": 10, "patience": 2},
}

_PRESETS: dict[str, dict] = {
    "sparcode": _ALL_TO_ALL,
    "all-to-all": _ALL_TO_ALL,
    # The two-tower gets its strongest cheap setting: a full softmax over the catalog.
    "two-tower": {
        "model": {"tokenizer": "attention"},
        "train": {"batch_size": 512, "negatives": 0, "epochs": 20, "patience": 3},
    },
    "ease": {},
    "tiger": {"train": {"batch_size": 256, "epochs": 40, "patience": 3}},
}

# On Beauty the preset's validation R@10 was still rising at epoch 10 (0.0761); with 20 epochs
# and patience 3 it peaked at epoch 12 (0.0794) and served R@10 0.0577 against 0.0532 (README).
# Every window each epoch instead of 0.4 of them (Beauty has only 131k, and the two-tower sees
# them all): SparCode's best epoch 12 of 15, served R@5 0.0478 / N@10 0.0399 history kept against
# 0.0440 / 0.0362, level with the two-tower preset (0.0477 / 0.0409), in 11 min (README).
_BEAUTY_TRAINING = {"train": {"epochs": 20, "patience": 3, "window_fraction": 1.0}}
# Beauty's 22k users lost 16 % of R@10 to quantization with 2 codebooks of 256 (dense scores
# of the continuous token 0.0719, of its code 0.0604; served 0.0619), and storing fewer pairs
# cost next to nothing. Finer codes: 4 codebooks served 0.0685 at 1 % stored, 8 codebooks (8
# dims each) 0.0717 at 0.5 %, from 6.7 M pairs against 9.05 M for 2 codebooks at 5 %
# (scripts/serving_sweep.py, README). The all-to-all has no quantizer to refine.
_BEAUTY_SPARCODE = {**_BEAUTY_TRAINING, "model": {"codebooks": 8}, "serve": {"stored_fraction": 0.005}}

# ml-1m's test targets are the next 20 % of each sequence (~30 items), not only the next one.
# Training each window on its next 10 items (train.future_targets) lifted validation R@50 by
# 0.02-0.03 for every model, and test R@50 from 0.3691 to 0.4079 for the two-tower and from
# 0.3609 to 0.3657-0.3784 for SparCode (two trainings; README, run D). Beauty's test target is the very next item,
# and its presets were measured without it.
_ML1M_UPCOMING = {"train": {"future_targets": 10}}

# 2 codebooks cost ml-1m 6-9 % of R@50 against the unindexed all-to-all (served 0.3657-0.3784
# against 0.4007). 8 codebooks of 8 dims quantize almost losslessly (seed 1: continuous token
# 0.4004, its code 0.3972, scored densely) but give nearly every training window its own code
# (705k), 48.7 M postings at 2 % stored. A query token probes its 8 nearest indexed codes, so an
# index of a seeded 50,000 of them keeps most of it: served R@50 0.3877 (seed 0) and 0.3907
# (seed 1) from 3.45 M postings, fewer than 2 codebooks stored at 5 %, against 0.3908 / 0.3965
# with every code indexed (README, run E).
_ML1M_SPARCODE = {**_ML1M_UPCOMING, "model": {"codebooks": 8},
                  "serve": {"stored_fraction": 0.02, "max_codes": 50_000}}

_DATASET_OVERRIDES: dict[tuple[str, str], dict] = {
    ("ml-1m", "sparcode"): _ML1M_SPARCODE,
    ("ml-1m", "all-to-all"): _ML1M_UPCOMING,
    ("ml-1m", "two-tower"): _ML1M_UPCOMING,
    ("beauty", "*"): {"train": {"select_metric": "recall@10"}},
    ("beauty", "sparcode"): _BEAUTY_SPARCODE,
    ("beauty", "all-to-all"): _BEAUTY_TRAINING,
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_config(model: str, dataset: str, split: str, overrides: dict | None = None,
               seed: int | None = None, epochs: int | None = None) -> RunConfig:
    """The preset for (model, dataset), then `overrides` (a config file's JSON object, read once by
    the caller: a file given as <(…) or /dev/stdin cannot be read twice), then the flags."""
    data = merge({"dataset": dataset, "split": split, "model": {"kind": model}}, _PRESETS.get(model, {}))
    for (name, kind), extra in _DATASET_OVERRIDES.items():
        if name == dataset and kind in ("*", model):
            data = merge(data, extra)
    cfg = RunConfig.from_dict(data)
    if overrides is not None:
        RunConfig.from_dict(merge(RunConfig().to_dict(), overrides))  # unknown keys and bad values fail here, naming the key
        cfg = RunConfig.from_dict(merge(cfg.to_dict(), overrides))
    if seed is not None:
        cfg.seed = seed
    with_epochs(cfg, epochs)
    cfg.model.kind = model
    return cfg.validate()


def with_epochs(cfg: RunConfig, epochs: int | None) -> RunConfig:
    """--epochs: train.epochs, and a TIGER config's own `tiger.epochs`, which would otherwise win."""
    if epochs is not None:
        cfg.train.epochs = epochs
        if "epochs" in cfg.tiger:
            cfg.tiger["epochs"] = epochs
    return cfg
