"""TIGER end to end: semantic IDs, seq2seq training, evaluation and one-user search.

Everything lives in ``RUN_DIR/tiger/`` so it never collides with the run's top-level
config.json (the lead's RunConfig):

    item_embeddings.npy/.json   sentence embeddings of the item text (cache)
    rqvae/config.json, rqvae/weights.pt
    semantic_ids.npy/.json      (n_items, 4) IDs, collision rate, codebook usage
    cold_items.npy              items held out of training (seeded, `cold_fraction`)
    config.json, weights.pt     TigerConfig + best seq2seq state_dict (tensors only)
    state.pt                    last epoch's model/optimizer/counters, for resume
    history.jsonl               one line per epoch

Cold start: a seeded share of items never appears as a training target; they keep their
semantic IDs and stay in the trie. Training windows whose *history* contains a cold item are
kept: the encoder only sees that item's content-derived codes, never a learned identity.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparcode.data.dataset import sample_rows
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.train import bf16_supported
from sparcode.generative.beam import ColdIndex, beam_search
from sparcode.generative.config import TigerConfig
from sparcode.generative.curves import read_history
from sparcode.generative.rqvae import RQVAEConfig, fit_rqvae, usage
from sparcode.generative.semantic_ids import (PrefixTrie, add_dedup_token, collision_stats, load_ids, save_ids,
                                              vocab_sizes)
from sparcode.generative.seq2seq import Batch, TigerSeq2Seq, pick_device

TIGER_DIR = "tiger"
CONFIG, WEIGHTS, STATE, HISTORY, COLD = "config.json", "weights.pt", "state.pt", "history.jsonl", "cold_items.npy"


def tiger_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TIGER_DIR


def _save_tensors(obj, path: Path) -> None:
    from sparcode.encoder.checkpoint import atomic_torch_save

    atomic_torch_save(obj, path)


# --- semantic IDs -----------------------------------------------------------------------------

def adopt_built_ids(run_dir: Path, run_cfg, dataset, config_file: Path | None = None) -> None:
    """Semantic IDs already built in RUN_DIR for these items are reused, whatever RQ-VAE settings
    the run's config names: so the config must name the ones they were built with. Settings the
    config sets explicitly (`tiger.rqvae`) and the IDs do not have are refused, naming the way out;
    the rest are taken from the IDs, so config.json records the IDs the model decodes. Once a
    TIGER model is trained on the IDs they are what it decodes, whatever an older config said."""
    from sparcode.config import ConfigError
    from sparcode.generative.semantic_ids import IDS, IDS_META, settings_not_built_with

    folder = tiger_dir(run_dir)
    if not (folder / IDS).is_file() or not (folder / IDS_META).is_file():
        return
    meta = ckpt.read_json(folder / IDS_META)
    built_with = meta.get("rqvae_config")
    if meta.get("item_ids") != list(dataset.item_ids) or not isinstance(built_with, dict):
        return  # IDs of other items are rebuilt; IDs from before settings were recorded say nothing
    built_with = {key: value for key, value in built_with.items() if key != "input_dim"}
    asked = run_cfg.tiger.get("rqvae") or {}
    differ = settings_not_built_with(built_with, asked)
    trained = (folder / WEIGHTS).is_file() or (folder / STATE).is_file()
    if differ and not trained:
        shown = ", ".join(f"tiger.rqvae.{key} {asked[key]!r} (the IDs: {built_with.get(key)!r})" for key in differ)
        raise ConfigError(f"{folder} holds semantic IDs built with other settings: {shown}; rebuild them with "
                          f"{_rebuild_command(run_dir, run_cfg, config_file)} first, or drop those keys")
    run_cfg.tiger["rqvae"] = built_with


def _rebuild_command(run_dir: Path, run_cfg, config_file: Path | None) -> str:
    """The `semantic-ids` command that builds the IDs this run asks for: its dataset (the
    command's default is Beauty), seed, and the config file that set the keys."""
    import shlex

    words = ["sparcode", "semantic-ids", "--dataset", str(run_cfg.dataset), "--out", str(run_dir),
             "--config", str(config_file) if config_file else "CONFIG"]
    if run_cfg.seed:
        words += ["--seed", str(run_cfg.seed)]
    command = " ".join(map(shlex.quote, words + ["--force"]))
    return f"`{command}`" + ("" if config_file else " (CONFIG: a file setting those tiger.rqvae keys)")


def build_semantic_ids(run_dir: Path, dataset, cfg: TigerConfig | None = None, device=None, log=print,
                       force: bool = False) -> tuple[np.ndarray, dict]:
    """Text → embeddings → RQ-VAE → unique 4-token IDs, written to RUN_DIR/tiger/.

    Existing IDs for the same items are reused, so `sparcode semantic-ids` followed by
    `sparcode train --model tiger` in the same RUN_DIR fits the RQ-VAE once."""
    from sparcode.generative.text import item_embeddings

    cfg = cfg or TigerConfig()
    out = tiger_dir(run_dir)
    if not force and (out / "semantic_ids.npy").is_file():
        ids, meta = load_ids(out)
        if meta.get("item_ids") == list(dataset.item_ids):
            return ids, meta
        log(f"semantic IDs in {out} were built for other items; building them again")
    device = torch.device(device) if device else pick_device()
    embeddings = item_embeddings(dataset, out, device=str(device), log=log)
    rq_cfg = RQVAEConfig.from_dict({**cfg.rqvae.to_dict(), "input_dim": int(embeddings.shape[1])})
    model, fit = fit_rqvae(embeddings, rq_cfg, device=str(device), log=log)
    codes = model.encode(torch.as_tensor(embeddings, device=device)).cpu().numpy()
    (out / "rqvae").mkdir(parents=True, exist_ok=True)
    (out / "rqvae" / CONFIG).write_text(json.dumps(rq_cfg.to_dict(), indent=2) + "\n")
    _save_tensors({k: v.cpu() for k, v in model.state_dict().items()}, out / "rqvae" / WEIGHTS)
    ids = add_dedup_token(codes)
    meta = {
        "dataset": dataset.name,
        "vocab": vocab_sizes(ids, rq_cfg.codes),
        "collisions": collision_stats(codes),
        "collision_rate_after_dedup": collision_stats(ids)["collision_rate"],
        "codebook_usage": usage(codes, rq_cfg.codes),
        "rqvae_seconds": round(fit["seconds"], 1),
        "rqvae_final": fit["history"][-1],
        "dead_codes_reseeded": fit["reseeded_total"],
        "item_ids": list(dataset.item_ids),
        "rqvae_config": rq_cfg.to_dict(),
    }
    save_ids(out, ids, meta)
    log(f"semantic IDs: collision rate {meta['collisions']['collision_rate']:.4f} before the 4th token, "
        f"codebook usage {[round(u, 3) for u in meta['codebook_usage']]}, vocab {meta['vocab']}")
    return ids, meta


def pick_cold_items(n_items: int, fraction: float, seed: int) -> np.ndarray:
    count = int(round(n_items * fraction))
    return np.sort(np.random.default_rng([seed, 5]).choice(n_items, size=count, replace=False)).astype(np.int64)


def user_buckets(user_ids: list[str], buckets: int) -> np.ndarray:
    # crc32, not hash(): Python salts str hashes per process, which would reshuffle users on reload.
    return np.array([zlib.crc32(str(u).encode()) % buckets for u in user_ids], dtype=np.int64)


# --- model state shared by training, evaluation and search ------------------------------------

@dataclass
class Tiger:
    cfg: TigerConfig
    model: TigerSeq2Seq
    ids: np.ndarray  # (n_items, levels)
    trie: PrefixTrie
    cold: np.ndarray
    buckets: np.ndarray  # per user index
    device: torch.device
    codes_table: torch.Tensor  # (n_items + 1, levels); last row = padding codes

    def batch(self, histories: np.ndarray, users: np.ndarray, positives: np.ndarray | None = None) -> Batch:
        hist = torch.as_tensor(histories, dtype=torch.long, device=self.device)
        pad = len(self.ids)
        targets = self.codes_table[torch.as_tensor(positives, device=self.device)] if positives is not None else None
        return Batch(self.codes_table[hist], hist == pad,
                     torch.as_tensor(self.buckets[users], device=self.device), targets)

    @torch.no_grad()
    def rank(self, histories: np.ndarray, users: np.ndarray, beam: int, exclude: list[np.ndarray] | None = None,
             temperatures=None, batch_size: int = 256, generator=None) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        items, scores = [], []
        for start in range(0, len(users), batch_size):
            part = slice(start, start + batch_size)
            b = self.batch(histories[part], users[part])
            memory, mask = self.model.encode(b.history, b.history_mask, b.users)
            i, s = beam_search(self.model, memory, mask, self.trie, beam,
                               exclude=exclude[part] if exclude is not None else None,
                               temperatures=temperatures, generator=generator)
            items.append(i)
            scores.append(s)
        if not items:
            return np.zeros((0, beam), np.int64), np.zeros((0, beam), np.float32)
        return np.concatenate(items), np.concatenate(scores)


def _make_tiger(cfg: TigerConfig, dataset, ids: np.ndarray, meta: dict, device) -> Tiger:
    vocab = meta["vocab"]
    model = TigerSeq2Seq(vocab, cfg.d_model, cfg.heads, cfg.encoder_layers, cfg.decoder_layers, cfg.ff_dim,
                         cfg.dropout, cfg.max_history, cfg.user_buckets).to(device)
    table = torch.as_tensor(np.vstack([ids, np.asarray(vocab, dtype=np.int64)[None]]), device=device)
    cold = pick_cold_items(len(ids), cfg.cold_fraction, cfg.seed)
    return Tiger(cfg, model, ids, PrefixTrie.build(ids, vocab), cold,
                 user_buckets(dataset.user_ids, cfg.user_buckets), device, table)


def load_tiger(run_dir: Path, dataset, device=None) -> Tiger:
    folder = tiger_dir(run_dir)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS}: train with `sparcode train --model tiger --out {run_dir}` (add --resume if it was interrupted)")
    cfg = TigerConfig.from_dict(ckpt.read_json(folder / CONFIG))
    ids, meta = load_ids(folder)
    if meta.get("item_ids") != list(dataset.item_ids):
        raise ValueError(f"{folder} was trained on other items than dataset {dataset.name!r}")
    tiger = _make_tiger(cfg, dataset, ids, meta, torch.device(device) if device else pick_device())
    tiger.model.load_state_dict(ckpt.load_tensors(folder / WEIGHTS))
    tiger.model.eval()
    return tiger


# --- training ---------------------------------------------------------------------------------

def _warn_if_budget_outlasts_time(cfg: TigerConfig, step: int, elapsed: float, steps_run: int, log) -> None:
    """After the first epoch: say so when ``max_minutes`` will stop a step budget before its end,
    which leaves the learning rate mid-decay (the user may prefer a smaller ``total_steps``)."""
    if not (cfg.total_steps and cfg.max_minutes and steps_run):
        return
    per_step = elapsed / steps_run  # the first validation included: max_minutes counts wall time
    remaining = cfg.max_minutes * 60 - elapsed
    reachable = step + max(0, int(remaining / per_step))
    if reachable >= cfg.total_steps:
        return
    needed = elapsed + (cfg.total_steps - step) * per_step
    log(f"warning: at {per_step * 1000:.0f} ms/step the {cfg.total_steps:,}-step budget needs about "
        f"{needed / 60:.0f} min, more than tiger.max_minutes = {cfg.max_minutes:g}; training will stop near step "
        f"{reachable:,} with the learning rate at {_lr_factor(reachable, cfg.warmup_steps, cfg.total_steps):.0%} "
        f"of its peak. A total_steps of about {reachable:,} would finish the decay in time.")


def _lr_factor(step: int, warmup: int, total_steps: int = 0) -> float:
    """Linear warm-up, then inverse square root (T5/TIGER) when the run is open-ended; with a
    known step budget, linear decay to 0 at `total_steps` instead, which spends the budget
    better than a rate that is still high when the steps run out."""
    warmup = max(1, warmup)
    if step + 1 < warmup:
        return (step + 1) / warmup
    if total_steps > warmup:
        return max(0.0, (total_steps - step) / (total_steps - warmup))
    return math.sqrt(warmup / (step + 1))


def train_tiger(run_dir: Path, dataset, split, config=None, resume: bool | None = None, log=print,
                device=None, progress: bool = False) -> dict:
    """Fit TIGER on ``split.train`` windows; validation ``tiger.select_on`` (R@10) picks the best epoch.

    ``config``: TigerConfig, dict of its keys, or a RunConfig (shared keys mapped). With
    ``resume=None`` an unfinished run in RUN_DIR continues from its last epoch."""
    cfg = TigerConfig.coerce(config)
    cfg.max_history = split.max_history
    folder = tiger_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device else pick_device()
    torch.manual_seed(cfg.seed)
    ids, meta = build_semantic_ids(run_dir, dataset, cfg, device=device, log=log)
    tiger = _make_tiger(cfg, dataset, ids, meta, device)
    np.save(folder / COLD, tiger.cold)
    (folder / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    is_cold = np.zeros(len(ids) + 1, dtype=bool)
    is_cold[tiger.cold] = True
    keep = ~is_cold[split.train.positives]
    histories, users, positives = split.train.histories[keep], split.train.users[keep], split.train.positives[keep]
    n = len(positives)
    steps_per_epoch = n // cfg.batch_size if not cfg.steps_per_epoch else min(cfg.steps_per_epoch, n // cfg.batch_size)
    if steps_per_epoch == 0:
        from sparcode.config import ConfigError

        raise ConfigError(f"{n} training windows are fewer than one batch of {cfg.batch_size}; "
                          "lower train.batch_size in the --config file")

    model = tiger.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch, step, best, best_epoch, bad_epochs = 0, 0, -1.0, 0, 0
    state_path = folder / STATE
    if resume is None:
        resume = state_path.is_file() and not (folder / "finished").exists()
    if resume and state_path.is_file():
        state = ckpt.load_tensors(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, best, bad_epochs = int(state["epoch"]), int(state["step"]), float(state["best"]), int(state["bad_epochs"])
        best_epoch = int(state.get("best_epoch", -1))  # states saved before it was recorded lack it
        ckpt.follow_state(folder / HISTORY, folder / WEIGHTS, epoch, best_epoch, state["model"])
        log(f"resuming TIGER at epoch {epoch + 1} (best valid {cfg.select_on} {best:.4f})")
    elif (folder / HISTORY).exists():
        (folder / HISTORY).unlink()

    valid_rows = sample_rows(len(split.valid), cfg.eval_users, cfg.seed)
    elapsed_before, train_seconds = _time_so_far(folder / HISTORY) if resume else (0.0, 0.0)
    started = time.perf_counter()
    step_seconds: list[float] = []
    use_bf16 = cfg.bf16 and bf16_supported(device)
    log(f"TIGER: {n} windows ({int((~keep).sum())} with a cold positive dropped), {steps_per_epoch} steps/epoch, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters on {device}"
        + (", bf16 training steps" if use_bf16 else ""))
    while (step < cfg.total_steps) if cfg.total_steps else (epoch < cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout: resumable without saving RNG state
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        total = 0.0
        budget_spent = False
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="step", disable=not progress,
                   dynamic_ncols=True, leave=False)
        for s in bar:
            t0 = time.perf_counter()
            rows = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, cfg.warmup_steps, cfg.total_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(tiger.batch(histories[rows], users[rows], positives[rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step_loss = loss.item()
            total += step_loss
            step += 1
            step_seconds.append(time.perf_counter() - t0)
            if s % 20 == 0:
                bar.set_postfix(loss=f"{step_loss:.3f}", step=step)
            if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
                budget_spent = True
                break
            if cfg.total_steps and step >= cfg.total_steps:
                budget_spent = True
                break
        bar.close()
        epoch += 1
        done_steps = s + 1
        t_eval = time.perf_counter()
        valid_metrics = _validate(tiger, split.valid, valid_rows)
        if len(step_seconds) == done_steps and not budget_spent:
            _warn_if_budget_outlasts_time(cfg, step, time.perf_counter() - started, len(step_seconds), log)
        valid = valid_metrics[cfg.select_on]
        train_seconds += float(np.sum(step_seconds[-done_steps:]))
        # elapsed/train_seconds continue across --resume, so a curve against time stays one curve.
        row = {"epoch": epoch, "loss": total / done_steps, "steps": done_steps, "step": step,
               **{f"valid_{k}": v for k, v in valid_metrics.items()},
               "seconds_per_step": float(np.mean(step_seconds[-done_steps:])),
               "eval_seconds": round(time.perf_counter() - t_eval, 1),
               "train_seconds": round(train_seconds, 3),
               "elapsed": round(elapsed_before + time.perf_counter() - started, 3)}
        with open(folder / HISTORY, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        improved = valid > best
        if improved:
            best, best_epoch, bad_epochs = valid, epoch, 0
        else:
            bad_epochs += 1
        log(f"epoch {epoch}: loss {row['loss']:.4f}, valid R@5 {valid_metrics['recall@5']:.4f} "
            f"R@10 {valid_metrics['recall@10']:.4f} N@10 {valid_metrics['ndcg@10']:.4f}"
            f"{f' * ({cfg.select_on})' if improved else ''}, "
            f"{row['seconds_per_step'] * 1000:.0f} ms/step, eval {row['eval_seconds']}s")
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _save_tensors({"model": weights, "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                       "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs}, state_path)
        if improved:
            _save_tensors(weights, folder / WEIGHTS)
        if budget_spent or (bad_epochs >= cfg.patience and not cfg.total_steps):
            break
    (folder / "finished").write_text("")
    chosen = max(read_history(folder / HISTORY), key=lambda r: r[f"valid_{cfg.select_on}"])  # the first of ties, as `valid > best` keeps
    return {
        "train_seconds": round(time.perf_counter() - started, 1), "epochs": epoch, "steps": step,
        "steps_per_epoch": steps_per_epoch, "seconds_per_step": float(np.mean(step_seconds)) if step_seconds else None,
        "bf16": use_bf16,
        "select_on": cfg.select_on, "best_epoch": chosen["epoch"],
        "best_valid_recall@10": chosen["valid_recall@10"], "collision_rate": meta["collisions"]["collision_rate"],
        "codebook_usage": meta["codebook_usage"], "cold_items": int(len(tiger.cold)),
    }


def _validate(tiger: Tiger, evalset, rows: np.ndarray) -> dict[str, float]:
    """Validation R@5, N@5, R@10, N@10 (recall@10 picks the checkpoint)."""
    from sparcode.eval.metrics import ranking_metrics

    if len(rows) == 0:
        return {f"{m}@{k}": 0.0 for k in (5, 10) for m in ("recall", "ndcg")}
    items, _ = tiger.rank(evalset.histories[rows], evalset.users[rows], beam=10)
    metrics = ranking_metrics(_pad([row[row >= 0] for row in items], 10), [evalset.targets[r] for r in rows], (5, 10))
    return {f"{m}@{k}": metrics[f"{m}@{k}"] for k in (5, 10) for m in ("recall", "ndcg")}


def validation_metrics(run_dir: Path, dataset, split, device=None) -> dict[str, float]:
    """The best checkpoint's R@5/N@5/R@10/N@10 on the validation users training selected it with."""
    tiger = load_tiger(run_dir, dataset, device)
    return _validate(tiger, split.valid, sample_rows(len(split.valid), tiger.cfg.eval_users, tiger.cfg.seed))


def _time_so_far(history: Path) -> tuple[float, float]:
    """(elapsed, train seconds) recorded by the last epoch before a resume; zeros without history."""
    if not history.is_file():
        return 0.0, 0.0
    lines = [line for line in history.read_text().splitlines() if line.strip()]
    if not lines:
        return 0.0, 0.0
    last = json.loads(lines[-1])
    return float(last.get("elapsed", 0.0)), float(last.get("train_seconds", 0.0))


# --- evaluation -------------------------------------------------------------------------------

NO_CATEGORY = 0  # leaf_categories' code for an item without one


def leaf_categories(dataset) -> np.ndarray | None:
    """Per item, a code for its most specific category (Beauty: last element of the category
    path), 1 upwards; NO_CATEGORY for an item without categories, which the entropy leaves out."""
    if not dataset.item_attributes:
        return None
    names = []
    for attributes in dataset.item_attributes:
        path = attributes.get("categories") or attributes.get("genres") or []
        names.append(str(path[-1]) if path else None)
    known = sorted({name for name in names if name is not None})
    if not known:
        return None  # no item has a category: entropy does not apply (not 0, which reads as "one category")
    code = {name: i + 1 for i, name in enumerate(known)}
    return np.array([code[name] if name is not None else NO_CATEGORY for name in names], dtype=np.int64)


def category_entropy(rankings: list[np.ndarray], categories: np.ndarray, k: int = 10) -> float:
    """Mean over users of the entropy (nats) of the leaf-category distribution of their top-k.

    Items without a category are left out: pooling them as one shared category would count a
    list of uncategorised items as undiverse, and each as its own as maximally diverse, when we
    know neither. A user none of whose top-k has a category does not count."""
    values = []
    for ranked in rankings:
        top = np.asarray(ranked[:k], dtype=np.int64)
        top = top[top >= 0]
        known = categories[top]
        known = known[known != NO_CATEGORY]
        if len(known) == 0:
            continue
        _, counts = np.unique(known, return_counts=True)
        p = counts / counts.sum()
        values.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(values)) if values else float("nan")


def evaluate_tiger(run_dir: Path, dataset, split, evalset=None, exclude_seen: bool | None = None,
                   ks=(5, 10, 20, 50), temperatures=None, beam_size: int | None = None, batch_size: int = 256,
                   max_users: int = 0, device=None, seed: int = 0, return_scores: bool = False):
    """→ (metrics, rankings) on ``evalset`` (default: the test users); with ``return_scores`` the
    rankings' beam log-probabilities come third.

    metrics: recall@K, ndcg@K, hr@K for every K in ``ks``; ``cold_recall@10`` over users whose
    target is a cold item, with prefix-matched cold items mixed into the top-10 (and
    ``cold_recall@10_generated`` without that mixing); ``entropy@10`` over leaf categories.
    Rankings are the model's beams, best first, one array per user."""
    from sparcode.eval.metrics import ranking_metrics

    evalset = split.test if evalset is None else evalset
    exclude = split.exclude_seen_default if exclude_seen is None else exclude_seen
    tiger = load_tiger(run_dir, dataset, device)
    rows = sample_rows(len(evalset), max_users, seed)
    k_max = max(ks)
    beam = max(beam_size or tiger.cfg.beam_size, k_max, 10)
    seen = [evalset.seen[r] for r in rows]
    generator = torch.Generator().manual_seed(seed) if temperatures is not None else None
    started = time.perf_counter()
    items, log_probs = tiger.rank(evalset.histories[rows], evalset.users[rows], beam,
                                  exclude=seen if exclude else None, temperatures=temperatures,
                                  batch_size=batch_size, generator=generator)
    seconds = time.perf_counter() - started
    rankings = [row[row >= 0][:k_max] for row in items]
    scores = [row_scores[row >= 0][:k_max] for row, row_scores in zip(items, log_probs)]
    targets = [evalset.targets[r] for r in rows]
    metrics = ranking_metrics(_pad(rankings, k_max), targets, ks)

    cold_index = ColdIndex(tiger.ids, tiger.cold, tiger.cfg.cold_prefix_depth)
    is_cold = np.zeros(len(tiger.ids), dtype=bool)
    is_cold[tiger.cold] = True
    cold_rows = [i for i, t in enumerate(targets) if is_cold[t].any()]
    if cold_rows:
        mixed = [cold_index.mix(items[i], 10, tiger.cfg.cold_slots, seen[i] if exclude else None) for i in cold_rows]
        cold_targets = [targets[i][is_cold[targets[i]]] for i in cold_rows]
        metrics["cold_recall@10"] = ranking_metrics(_pad(mixed, 10), cold_targets, (10,))["recall@10"]
        metrics["cold_recall@10_generated"] = ranking_metrics(
            _pad([rankings[i][:10] for i in cold_rows], 10), cold_targets, (10,))["recall@10"]
    else:
        metrics["cold_recall@10"] = metrics["cold_recall@10_generated"] = float("nan")
    metrics["cold_users"] = len(cold_rows)
    categories = leaf_categories(dataset)
    metrics["entropy@10"] = category_entropy(rankings, categories, 10) if categories is not None else float("nan")
    metrics["exclude_seen"] = bool(exclude)
    metrics["beam_size"] = beam
    metrics["seconds"] = round(seconds, 1)
    return (metrics, rankings, scores) if return_scores else (metrics, rankings)


def _pad(rankings: list[np.ndarray], k: int) -> np.ndarray:
    from sparcode.eval.metrics import pad_rankings

    return pad_rankings(rankings, k)


# --- one user ---------------------------------------------------------------------------------

class TigerSearcher:
    """Loads a run once and answers top-k for any user from the user's full known history."""

    def __init__(self, run_dir: Path, dataset=None, device=None, prefix_backend=None):
        """``prefix_backend``: a `SidPrefixBackend` on the run's exported semantic IDs; cold
        items then come from Elasticsearch term lookups instead of the in-process ColdIndex."""
        from sparcode.data.readers import load_dataset

        cfg = TigerConfig.from_dict(ckpt.read_json(tiger_dir(run_dir) / CONFIG))
        self.dataset = dataset or load_dataset(cfg.dataset)
        self.tiger = load_tiger(run_dir, self.dataset, device)
        self.user_index = {u: i for i, u in enumerate(self.dataset.user_ids)}
        self.cold = ColdIndex(self.tiger.ids, self.tiger.cold, cfg.cold_prefix_depth)
        self.prefix_backend = prefix_backend

    def engine_lookup(self, generated: np.ndarray, skip: set[int], limit: int) -> list[int]:
        """ColdIndex.candidates(generated, skip)[:limit], answered by the prefix index."""
        if limit <= 0:
            return []
        hits = self.prefix_backend.search(self.tiger.ids[generated[generated >= 0]].tolist(), self.cold.depths, limit,
                                          exclude_items=[self.dataset.item_ids[i] for i in sorted(skip)])
        return [h.ord for h in hits]

    def search(self, user_id: str, k: int = 10, exclude_seen: bool = True, cold_slots: float = 0.0,
               temperatures=None) -> list[tuple[str, float]]:
        from sparcode.data.splits import last_items

        if str(user_id) not in self.user_index:
            raise KeyError(f"unknown user {user_id!r} in dataset {self.dataset.name!r}")
        u = self.user_index[str(user_id)]
        seq = self.dataset.sequences[u]
        history = last_items([seq], self.tiger.cfg.max_history, self.dataset.padding_item)
        beam = max(k, self.tiger.cfg.beam_size)
        items, scores = self.tiger.rank(history, np.array([u]), beam, exclude=[seq] if exclude_seen else None,
                                        temperatures=temperatures)
        generated = items[0][items[0] >= 0]
        ranked = generated
        if cold_slots:
            lookup = self.engine_lookup if self.prefix_backend is not None else None
            ranked = self.cold.mix(generated, k, cold_slots, seq if exclude_seen else None, lookup=lookup)
        # mix keeps a prefix of the beam's list and appends the prefix-matched cold items, which
        # rank below every beam kept: -inf, whatever score a deeper beam gave the same item.
        return [(self.dataset.item_ids[item], float(scores[0][rank]) if rank < len(generated) and generated[rank] == item
                 else float("-inf")) for rank, item in enumerate(ranked[:k])]

