"""Run configuration as dataclasses. A config file may set any documented key; an unknown key
is an error, never a silent default (a typo in a key must not train the wrong model)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_KINDS = ("sparcode", "all-to-all", "two-tower", "ease", "tiger")
TOKENIZERS = ("dnn", "gru", "attention", "interests")


class ConfigError(ValueError):
    pass


DEAD_CODE_SHARE = 0.1  # a code used at a tenth of the uniform rate is dead


@dataclass
class ModelConfig:
    kind: str = "sparcode"
    dim: int = 64  # token width; split into `codebooks` sub-vectors by the quantizer
    tokenizer: str = "attention"
    user_tokens: int = 4  # K_u
    item_tokens: int = 1  # K_c
    codebooks: int = 2  # M
    codes: int = 256  # N per codebook
    ema_decay: float = 0.99
    commit_weight: float = 0.25  # λ
    kmeans_iters: int = 10
    # EMA of a code's assignments per training step below which it is re-seeded from the batch.
    # None = DEAD_CODE_SHARE of the uniform rate (batch x K_u / N), resolved by validate(). The
    # library's usual absolute 2 sits above that rate at our batch shapes (0.5 per step for
    # batch 128, K_u 1, N 256), so 92 % of codes were re-seeded every step and the codebook
    # never settled.
    dead_code_threshold: float | None = None
    scorer_hidden: int = 64
    # A linear path w0 · (t ⊙ c) beside the scorer's hidden layer (see AllToAllScorer).
    scorer_linear_skip: bool = False
    # Bias inside ReLU(S + b) while training; the serving bias b̃ is chosen after training.
    train_bias: float = 0.0
    # Weight of the penalty on the mean squared cosine between a user's K_u tokens (before
    # quantization); without one they collapse to a single code per user.
    token_diversity: float = 0.0
    # Training activation in place of ReLU(S + b). "softplus" never has a dead region; its
    # negative side is exponentially small, so the model cannot rank items there (a leaky ReLU
    # did: validation R@50 0.023 after an epoch, as the serving ReLU erased that ranking), and
    # the exact ReLU died within an epoch (every S + b ≤ 0, no gradient). Serving always uses
    # the exact ReLU(S + b̃).
    train_activation: str = "softplus"
    dropout: float = 0.1
    feature_dim: int = 16
    # EASE only
    # Beauty chose 100 for seen-items-excluded scoring and 300 with them kept; ml-1m chose 1000.
    ease_lambda: list[float] = field(default_factory=lambda: [30.0, 100.0, 300.0, 1000.0, 3000.0])
    ease_history: int = 20
    # Fit B on what is known when the test users are scored too: each user's validation item
    # (leave-one-out), the held-out users' seen items (multi-target). Transductive, so off by
    # default: the learned models never train on those.
    ease_fold_in: bool = False


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    # constant, or cosine: lr decays over the planned epochs to lr × lr_floor (a fixed budget
    # of steps ends at a small step size instead of wherever Adam's noise leaves it).
    lr_schedule: str = "constant"
    lr_floor: float = 0.05
    weight_decay: float = 0.0
    # Uniformly sampled negatives shared by the whole batch; in-batch positives are used as
    # further negatives with a logQ correction. 0 = full softmax over the catalog.
    negatives: int = 256
    in_batch_negatives: bool = True
    # Fraction of sliding windows drawn each epoch (windows of one user overlap heavily).
    window_fraction: float = 1.0
    patience: int = 2
    max_history: int = 20
    grad_clip: float = 5.0
    eval_users: int = 0  # 0 = every validation user
    select_metric: str = "recall@50"
    threads: int = 0  # 0 = torch default
    # Score candidates in bfloat16 while training when the hardware has bf16 matmul.
    bf16: bool = True


@dataclass
class ServeConfig:
    # At most this fraction of (code, item) pairs is stored, chosen after training.
    stored_fraction: float = 0.05
    # per-code: each code keeps its best stored_fraction of the items; global: one b̃ for all.
    allocation: str = "per-code"
    # Each user token queries its this-many nearest indexed codes (1 = the paper's own code).
    query_probes: int = 8
    max_postings: int | None = None
    bias: float | None = None  # set explicitly to override the fraction-based choice


@dataclass
class RunConfig:
    dataset: str = "ml-1m"
    split: str = "multi-target"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    # TIGER-only settings (any key of `sparcode.generative.config.TigerConfig`, e.g. d_model,
    # max_minutes, rqvae); checked against TigerConfig when a TIGER run starts.
    tiger: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _build(cls, data, "config")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        return cls.from_dict(data)

    def validate(self) -> "RunConfig":
        if self.model.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, not {self.model.kind!r}")
        if self.model.train_activation not in ("softplus", "relu"):
            raise ConfigError("model.train_activation must be softplus or relu")
        if self.model.tokenizer not in TOKENIZERS:
            raise ConfigError(f"model.tokenizer must be one of {TOKENIZERS}, not {self.model.tokenizer!r}")
        if self.model.token_diversity < 0:
            raise ConfigError("model.token_diversity must be ≥ 0")
        if self.model.dim % self.model.codebooks:
            raise ConfigError("model.dim must be divisible by model.codebooks")
        if self.model.dead_code_threshold is None:
            uniform_rate = self.train.batch_size * self.model.user_tokens / self.model.codes
            self.model.dead_code_threshold = round(DEAD_CODE_SHARE * uniform_rate, 6)
        if self.model.dead_code_threshold < 0:
            raise ConfigError("model.dead_code_threshold must be ≥ 0 (0 turns re-seeding off)")
        if self.train.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"train.lr_schedule must be constant or cosine, not {self.train.lr_schedule!r}")
        if not 0 <= self.train.lr_floor <= 1:
            raise ConfigError("train.lr_floor must be in [0, 1]")
        if self.serve.query_probes < 1:
            raise ConfigError("serve.query_probes must be ≥ 1")
        if self.serve.allocation not in ("per-code", "global"):
            raise ConfigError(f"serve.allocation must be per-code or global, not {self.serve.allocation!r}")
        if not 0 < self.serve.stored_fraction <= 1:
            raise ConfigError("serve.stored_fraction must be in (0, 1]")
        return self


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)
