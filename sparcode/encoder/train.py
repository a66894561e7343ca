"""One explicit training loop for every neural model, readable top to bottom.

Per step: a batch of sliding-window examples, a candidate set (the batch's positives plus
uniformly sampled negatives shared by the batch, or the whole catalog), a softmax over the
candidates with the logQ correction for how often each candidate is sampled, plus the model's
auxiliary loss (the quantizer's commitment term). Validation on the validation users every
epoch; early stopping on the chosen metric; the best weights are kept.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparcode.config import ConfigError, RunConfig
from sparcode.data.dataset import Dataset, EvalSet, Split
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.models import build_model
from sparcode.eval.harness import evaluate_scores


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    # Without native bf16 matmul the CPU emulates it, ~20x slower than float32.
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def item_popularity(split: Split, n_items: int) -> np.ndarray:
    counts = np.bincount(split.train.positives, minlength=n_items).astype(np.float64)
    return counts / counts.sum()


class SampledSoftmax:
    """Softmax over [batch positives ; shared uniform negatives] with the logQ correction.

    A candidate's expected number of appearances in the set is B·pop(i) (as some example's
    positive) plus n_neg / n_items (as a uniform negative); subtracting its log keeps the
    estimate unbiased for the full softmax, so popular items are not over-penalised.
    """

    def __init__(self, popularity: np.ndarray, negatives: int, in_batch: bool, device):
        self.n_items = len(popularity)
        self.negatives = negatives
        self.in_batch = in_batch
        self.popularity = torch.as_tensor(popularity, dtype=torch.float32, device=device)
        self.device = device

    def candidates(self, positives: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.negatives <= 0:
            return None, None  # full softmax
        negs = torch.randint(0, self.n_items, (self.negatives,), generator=generator).to(self.device)
        batch = positives.shape[0]
        cands = torch.cat([positives, negs]) if self.in_batch else negs
        return cands, torch.log(self._expected(cands, batch))

    def loss(self, model, users, histories, positives, cands, log_q) -> torch.Tensor:
        encoded = model.encode_users(users, histories)
        if cands is None:
            return F.cross_entropy(model.score_all(encoded, model.item_tokens()), positives)
        logits = model.score_all(encoded, model.item_tokens(cands)) - log_q
        if self.in_batch:
            # Column b holds example b's own positive; other columns equal to it are not negatives.
            hits = positives.unsqueeze(1) == cands.unsqueeze(0)
            own = torch.zeros_like(hits)
            own[:, : positives.shape[0]] = torch.eye(positives.shape[0], dtype=torch.bool, device=hits.device)
            logits = logits.masked_fill(hits & ~own, float("-inf"))
            return F.cross_entropy(logits, torch.arange(positives.shape[0], device=logits.device))
        # Uniform proposal: the positive gets the same constant correction as the negatives.
        pos_logit = model.score_paired(encoded, model.item_tokens(positives)) - math.log(self.negatives / self.n_items)
        logits = logits.masked_fill(positives.unsqueeze(1) == cands.unsqueeze(0), float("-inf"))
        return F.cross_entropy(torch.cat([pos_logit.unsqueeze(1), logits], 1), torch.zeros_like(positives))

    def upcoming_loss(self, model, users, histories, upcoming, cands, log_q) -> torch.Tensor:
        """Mean over each window's next items (``upcoming``, (B, k), padded with n_items) of
        a softmax of that item against the shared negatives. The window's other upcoming items
        are masked out of the negatives: they are positives too, not things to push down."""
        encoded = model.encode_users(users, histories)
        valid = upcoming < self.n_items
        items = torch.where(valid, upcoming, torch.zeros_like(upcoming))
        batch, k = items.shape
        if cands is None:
            others = model.score_all(encoded, model.item_tokens())
            hits = torch.zeros_like(others, dtype=torch.bool).scatter_(1, items, valid)
            pos_logits = others.gather(1, items)
        else:
            others = model.score_all(encoded, model.item_tokens(cands)) - log_q
            hits = ((items.unsqueeze(2) == cands.view(1, 1, -1)) & valid.unsqueeze(2)).any(1)
            paired = model.score_paired(encoded.repeat_interleave(k, 0), model.item_tokens(items.reshape(-1)))
            pos_logits = paired.view(batch, k) - torch.log(self._expected(items, batch))
        negatives = torch.logsumexp(others.masked_fill(hits, float("-inf")), dim=1, keepdim=True)
        per_target = torch.logaddexp(pos_logits, negatives) - pos_logits
        return per_target[valid].mean()

    def _expected(self, items: torch.Tensor, batch: int) -> torch.Tensor:
        """How often each of `items` is expected among a batch's candidates."""
        uniform = self.negatives / self.n_items
        return (batch * self.popularity[items] + uniform) if self.in_batch else torch.full_like(items, uniform, dtype=torch.float32)


def learning_rate(cfg, step: int, total_steps: int) -> float:
    """The step's learning rate; a function of the global step alone, so --resume needs no state."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(step / max(total_steps, 1), 1.0)
    return t.lr * (t.lr_floor + (1.0 - t.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def model_scores(model, evalset: EvalSet, device, batch_size: int = 64):
    """score_fn for the harness: full-catalog scores of the model as trained (no serving bias)."""
    model.eval()
    with torch.no_grad():
        item_tokens = model.item_tokens()

    @torch.no_grad()
    def score(rows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            users = torch.as_tensor(evalset.users[part], device=device)
            hist = torch.as_tensor(evalset.histories[part], device=device)
            out.append(model.score_all(model.encode_users(users, hist), item_tokens).float().cpu().numpy())
        return np.concatenate(out)

    return score


def validate(model, evalset: EvalSet, n_items: int, device, exclude_seen: bool, max_users: int = 0) -> dict:
    if max_users and len(evalset) > max_users:
        keep = np.random.default_rng(0).choice(len(evalset), max_users, replace=False)
        evalset = EvalSet(evalset.users[keep], evalset.histories[keep],
                          [evalset.seen[i] for i in keep], [evalset.targets[i] for i in keep])
    metrics = evaluate_scores(model_scores(model, evalset, device), evalset, n_items, exclude_seen=exclude_seen)
    model.train()
    return metrics


def train(run_dir: Path, cfg: RunConfig, dataset: Dataset, split: Split, resume: bool = False,
          progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, dataset, split.max_history).to(device)
    model.profile.silence_values_absent_from(np.unique(split.train.users))
    if hasattr(model, "bf16"):
        model.bf16 = cfg.train.bf16 and bf16_supported(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sampler = SampledSoftmax(item_popularity(split, dataset.n_items), cfg.train.negatives,
                             cfg.train.in_batch_negatives, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    start_epoch, best, best_epoch, stale, elapsed = 0, -math.inf, -1, 0, 0.0
    state_path = run_dir / ckpt.STATE
    if resume and state_path.exists():
        state = ckpt.load_tensors(state_path)
        _check_shapes(run_dir, state["model"], model.state_dict())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch, stale = int(state["epoch"]) + 1, float(state["best"]), int(state["best_epoch"]), int(state["stale"])
        elapsed = float(state["elapsed"])
        generator.set_state(state["generator"])
        if "torch_rng" in state:  # dropout and the quantizer's restarts draw from it
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        # The window order replays the epochs already trained (one permutation each, cheap), so a
        # resumed run trains on exactly the windows an uninterrupted one would.
        for _ in range(start_epoch):
            rng.permutation(len(split.train))
        ckpt.follow_state(run_dir / ckpt.HISTORY, run_dir / ckpt.WEIGHTS, start_epoch, best_epoch, state["model"])
    elif not resume:
        (run_dir / ckpt.HISTORY).unlink(missing_ok=True)
    if start_epoch == 0 and cfg.model.kmeans_init_windows:
        seed_codebooks(model, split.train, cfg.model.kmeans_init_windows, cfg.seed, device)
    cfg.save(run_dir / ckpt.CONFIG)
    (run_dir / ckpt.RUN_INFO).unlink(missing_ok=True)  # unfinished until it finishes (again)

    train_set = split.train
    n_examples = len(train_set)
    per_epoch = max(1, int(n_examples * cfg.train.window_fraction))
    batch_size = cfg.train.batch_size
    steps_per_epoch = math.ceil(per_epoch / batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    model.train()
    # A run patience already stopped stays stopped on resume: one more epoch each time would be
    # neither the budget nor the rule (raise train.patience to go on).
    last_epoch = start_epoch
    for epoch in range(start_epoch, cfg.train.epochs if stale < cfg.train.patience else start_epoch):
        t0 = time.perf_counter()
        order = rng.permutation(n_examples)[:per_epoch]
        total_loss, steps = 0.0, 0
        bar = tqdm(range(0, per_epoch, batch_size), desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not progress, unit="batch", dynamic_ncols=True)
        for start in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch * steps_per_epoch + steps, total_steps)
            rows = order[start:start + batch_size]
            users = torch.as_tensor(train_set.users[rows], device=device)
            hist = torch.as_tensor(train_set.histories[rows], device=device)
            pos = torch.as_tensor(train_set.positives[rows], device=device)
            cands, log_q = sampler.candidates(pos, generator)
            if cfg.train.future_targets > 1:
                upcoming = torch.as_tensor(train_set.upcoming(rows, cfg.train.future_targets, dataset.padding_item),
                                           device=device)
                loss = sampler.upcoming_loss(model, users, hist, upcoming, cands, log_q)
            else:
                loss = sampler.loss(model, users, hist, pos, cands, log_q)
            loss = loss + model.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            step_loss = float(loss.detach())
            if not math.isfinite(step_loss):
                # Caught at the step: otherwise the epoch runs on and validation fails on NaN scores.
                raise ConfigError(f"training diverged: the loss is {step_loss} at step {steps + 1} of epoch "
                                  f"{epoch + 1}; lower train.lr (now {cfg.train.lr:g})"
                                  + ("" if cfg.train.grad_clip else " or set train.grad_clip"))
            total_loss += step_loss
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / steps:.3f}")
        train_seconds = time.perf_counter() - t0
        elapsed += train_seconds
        metrics = validate(model, split.valid, dataset.n_items, device, split.exclude_seen_default, cfg.train.eval_users)
        record = {"epoch": epoch + 1, "loss": total_loss / max(steps, 1), "train_seconds": round(train_seconds, 1), **metrics}
        quantizer = getattr(model, "quantizer", None)
        if quantizer is not None:
            record.update(quantizer.usage_stats())
        score = metrics[cfg.train.select_metric]
        improved = score > best
        if improved:
            best, best_epoch, stale = score, epoch + 1, 0
        else:
            stale += 1
        # History, then state, then best weights: a stop between any two of them is put right
        # by the next --resume (checkpoint.follow_state), which goes by the state.
        with open(run_dir / ckpt.HISTORY, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if progress:
            tqdm.write(_format_record(record, cfg.train.select_metric))
        ckpt.atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "best": best, "best_epoch": best_epoch, "stale": stale, "elapsed": elapsed,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }, state_path)
        if improved:
            ckpt.atomic_torch_save(model.state_dict(), run_dir / ckpt.WEIGHTS)
        last_epoch = epoch + 1
        if stale >= cfg.train.patience:
            break
    return {"best_epoch": best_epoch, "epochs": last_epoch, "planned_epochs": cfg.train.epochs,
            "stopped_early": stale >= cfg.train.patience and last_epoch < cfg.train.epochs,
            f"valid_{cfg.train.select_metric}": best, "train_seconds": round(elapsed, 1),
            "device": str(device), "torch": torch.__version__}


def seed_codebooks(model, train_set, windows: int, seed: int, device, chunk: int = 4096) -> None:
    """Run the quantizer's k-means init on the untrained tokens of `windows` random training
    windows, so that it clusters many tokens instead of the first batch's few. The window draw
    has its own generator: the epochs' orders stay those of a run without it."""
    quantizer = getattr(model, "quantizer", None)
    if quantizer is None:
        return
    rows = np.random.default_rng([seed, _CODEBOOK_SEED_STREAM]).permutation(len(train_set))[:windows]
    was_training = model.training
    model.eval()  # no dropout, no EMA step, no usage counts: the init alone
    with torch.no_grad():
        tokens = torch.cat([
            model.pre_quantization_tokens(torch.as_tensor(train_set.users[part], device=device),
                                          torch.as_tensor(train_set.histories[part], device=device))
            for part in np.array_split(rows, max(1, math.ceil(len(rows) / chunk)))])
        quantizer(tokens)  # the first forward runs the library's k-means init; later ones skip it
    model.train(was_training)


# Second entry of the window-draw seed: any constant apart from the epoch numbers --resume uses.
_CODEBOOK_SEED_STREAM = 0x6B6D


def _check_shapes(run_dir: Path, saved: dict, fresh: dict) -> None:
    """One line instead of load_state_dict's size-mismatch traceback: the checkpoint was made
    for another catalog (the dataset file changed) or another model shape (the config did)."""
    from sparcode.encoder.runs import RunError

    for name, tensor in fresh.items():
        old = saved.get(name)
        if old is None or tuple(old.shape) != tuple(tensor.shape):
            was = "missing" if old is None else f"shape {tuple(old.shape)}"
            raise RunError(f"cannot resume {run_dir}: its checkpoint's {name} is {was}, this dataset and config "
                           f"need {tuple(tensor.shape)} (was the dataset file or the model config changed?)")


def _format_record(record: dict, metric: str) -> str:
    extras = " ".join(f"{k}={v}" for k, v in record.items() if k.startswith("codes_used"))
    return (f"epoch {record['epoch']}: loss {record['loss']:.4f} valid {metric} {record[metric]:.4f} "
            f"ndcg@50 {record.get('ndcg@50', float('nan')):.4f} ({record['train_seconds']}s) {extras}")
