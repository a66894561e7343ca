"""Run configuration as dataclasses. A config file may set any documented key; an unknown key
is an error, never a silent default (a typo in a key must not train the wrong model)."""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparcode.errors import SparcodeError

MODEL_KINDS = ("sparcode", "all-to-all", "two-tower", "ease", "tiger")
TOKENIZERS = ("dnn", "gru", "attention", "interests")
SPLITS = ("multi-target", "leave-one-out")
ATTENTION_HEADS = 4  # the attention and interests tokenizers' head count; dim must divide by it


class ConfigError(SparcodeError, ValueError):
    pass


QUANTIZER_GRADIENTS = ("straight-through", "rotation")
DEAD_CODE_SHARE = 0.1  # a code used at a tenth of the uniform rate is dead
PER_CODE_BIAS_FRACTION = 0.5  # per-code allocation: b̃ at the median S; the caps do the pruning


@dataclass
class ModelConfig:
    # Keys older runs recorded that no longer mean anything: read and dropped, so those runs and
    # configs copied from them still load. feature_dim was never used (features are embedded at
    # `dim`).
    RETIRED_KEYS: typing.ClassVar[frozenset[str]] = frozenset({"feature_dim"})

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
    # Training windows whose untrained tokens seed the codebooks' k-means before the first step.
    # 0 = the library's default, the first batch: 128 tokens for 256 codes, so half the codes
    # start as duplicates and only dead-code re-seeding spreads them (the recorded presets).
    # The library's k-means holds a windows x codes distance matrix per codebook: tens of
    # thousands of windows are plenty.
    kmeans_init_windows: int = 0
    # EMA of a code's assignments per training step below which it is re-seeded from the batch.
    # None = DEAD_CODE_SHARE of the uniform rate (batch x K_u / N), resolved by validate(). The
    # library's usual absolute 2 sits above that rate at our batch shapes (0.5 per step for
    # batch 128, K_u 1, N 256), so 92 % of codes were re-seeded every step and the codebook
    # never settled.
    dead_code_threshold: float | None = None
    # How the task gradient crosses the quantizer to the tokenizer: "straight-through" (the
    # paper's identity) or "rotation" (Fifty et al. 2024: the gradient is rotated and scaled
    # as the token would have to be to reach its codeword, so it carries the angle between them).
    quantizer_gradient: str = "straight-through"
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
    # Each window's positives: the next item and the items after it, this many in all, each
    # scored against the same negatives (PinnerFormer's dense all-action loss). A user's test
    # targets are the next 20 % of the sequence, not only the next item. 1 = next item only.
    future_targets: int = 1
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
    # Index a seeded sample of at most this many of the training windows' distinct codes (None:
    # all of them). A query token probes its nearest indexed codes, so a sample costs little
    # quality where codes are fine-grained (8 codebooks on ml-1m: one code per window, README).
    max_codes: int | None = None
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
    # max_minutes, rqvae); checked against TigerConfig by `validate` whatever the model.
    tiger: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        return cls.from_dict(read_config_file(path))

    def validate(self) -> "RunConfig":
        """Values whose type is right but which would break training (or make it do nothing);
        checked before anything is written, so a bad value never leaves a half-made run."""
        from sparcode.eval.metrics import KS

        check_bounds(self, _BOUNDS)
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, not {self.split!r}")
        if not self.model.ease_lambda or any(lam <= 0 for lam in self.model.ease_lambda):
            raise ConfigError(f"model.ease_lambda must be a non-empty list of positive numbers, got {self.model.ease_lambda!r}")
        # The metrics every validation pass computes; anything else fails only after a whole epoch.
        metrics = [f"{name}@{k}" for k in KS for name in ("recall", "ndcg", "hr")]
        if self.train.select_metric not in metrics:
            raise ConfigError(f"train.select_metric must be one of {', '.join(metrics)}, not {self.train.select_metric!r}")
        if self.model.tokenizer in ("attention", "interests") and self.model.dim % ATTENTION_HEADS:
            raise ConfigError(f"model.dim must be divisible by {ATTENTION_HEADS} for the {self.model.tokenizer} tokenizer")
        if self.model.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, not {self.model.kind!r}")
        if self.model.train_activation not in ("softplus", "relu"):
            raise ConfigError("model.train_activation must be softplus or relu")
        if self.model.tokenizer not in TOKENIZERS:
            raise ConfigError(f"model.tokenizer must be one of {TOKENIZERS}, not {self.model.tokenizer!r}")
        if self.model.token_diversity < 0:
            raise ConfigError("model.token_diversity must be ≥ 0")
        if self.model.quantizer_gradient not in QUANTIZER_GRADIENTS:
            raise ConfigError(f"model.quantizer_gradient must be one of {QUANTIZER_GRADIENTS}, not {self.model.quantizer_gradient!r}")
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
        if self.tiger:
            # Checked for every model: a config file shared by all models would otherwise carry a
            # mistyped TIGER key silently until the day someone trains TIGER with it.
            from sparcode.generative.config import TigerConfig

            TigerConfig.from_run_config(self)
        return self


def check_allocation(allocation: str, stored_fraction: float, bias: float | None) -> None:
    """Refuse a per-code stored fraction the default b̃ cannot deliver."""
    if allocation == "per-code" and bias is None and stored_fraction > PER_CODE_BIAS_FRACTION:
        # b̃ at the median S drops every pair below it, so the per-code caps only ever prune from
        # about half of the pairs: a larger fraction would be silently cut to that.
        raise ConfigError(f"per-code allocation stores at most about {PER_CODE_BIAS_FRACTION:g} of the pairs "
                          f"(b̃ sits at the median score), not stored fraction {stored_fraction:g}: "
                          "global allocation stores more (export --allocation global, or serve.allocation: "
                          "global in the config)")


def check_bounds(config, bounds: dict[str, tuple[str, Any]], prefix: str = "") -> None:
    """Each dotted `path` of `config` (None = unset) satisfies its `(rule, ok)`; else a ConfigError
    naming `prefix + path` and the rule."""
    for path, (rule, ok) in bounds.items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        if value is not None and not ok(value):
            raise ConfigError(f"{prefix}{path} must be {rule}, got {value!r}")


def at_least(low):
    return "≥ " + str(low), lambda v: v >= low


POSITIVE = ("> 0", lambda v: v > 0)
PROBABILITY = ("in [0, 1)", lambda v: 0 <= v < 1)  # dropout, decay: 1 would stop learning


def _noted(rule: tuple[str, Any], note: str) -> tuple[str, Any]:
    return f"{rule[0]} ({note})", rule[1]


# Ranges outside which a value breaks training or silently does nothing (epochs -1 "trained"
# in 0 s and wrote no weights). Where 0 is allowed, it means "off" or "all" (see the field).
_BOUNDS: dict[str, tuple[str, Any]] = {
    "seed": ("in [0, 2**32 - 1]", lambda v: 0 <= v < 2**32),  # what numpy's legacy seeding takes
    # A code's term spells each index in 4 digits (c0412_0077).
    "model.codes": ("in [1, 10000]", lambda v: 1 <= v <= 10_000),
    # Upper bounds far above anything that trains here, below sizes whose first allocation
    # fails: past them a value is a typo, better named than met as an allocator error.
    **{f"model.{key}": (f"in [1, {high}]", lambda v, high=high: 1 <= v <= high)
       for key, high in (("dim", 4096), ("user_tokens", 256), ("item_tokens", 256), ("codebooks", 64),
                         ("scorer_hidden", 8192))},
    "model.ema_decay": PROBABILITY,
    "model.commit_weight": at_least(0),
    "model.kmeans_iters": at_least(0),
    "model.kmeans_init_windows": _noted(at_least(0), "0 = the first training batch"),
    "model.dropout": PROBABILITY,
    "model.ease_history": _noted(at_least(0), "0 = the whole history"),
    **{f"train.{key}": at_least(1) for key in ("epochs", "batch_size", "patience", "future_targets")},
    # Every training window stores this many item ids: 10,000 is already 64 GB on ml-1m.
    "train.max_history": ("in [1, 10000]", lambda v: 1 <= v <= 10_000),
    "train.lr": POSITIVE,
    "train.weight_decay": at_least(0),
    "train.negatives": _noted(at_least(0), "0 = full softmax"),
    "train.window_fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "train.grad_clip": _noted(at_least(0), "0 = no clipping"),
    "train.eval_users": _noted(at_least(0), "0 = every validation user"),
    "train.threads": _noted(at_least(0), "0 = torch default"),
    "serve.max_postings": at_least(1),
    "serve.max_codes": at_least(1),
}


def same_dataset(a: str, b: str) -> bool:
    """Named datasets compare by name, files by where they are (./x.txt and x.txt are one)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's JSON object, or a ConfigError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # Windows editors write a BOM
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
    return data


def check_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against a field's type annotation, naming ``key`` when it does not fit.

    JSON has no tuples and writes 1.0 as 1, so a list stands for a tuple and an int for a
    float (returned converted); nothing else is coerced: "one", 1.5 or true for an int, and
    "no" for a bool (a truthy string), are errors rather than silently different settings."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(value, option, key)
            except ConfigError as err:
                errors.append(err)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin in (list, tuple) or hint in (list, tuple):
        ok = isinstance(value, (list, tuple))
        if ok and args:
            item = args[0]  # list[X] and tuple[X, ...]; no field uses a fixed-length tuple
            value = [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if ok:
            value = tuple(value) if (origin or hint) is tuple else list(value)
    elif origin is dict or hint is dict:
        ok = isinstance(value, dict)
    else:
        ok = True  # Any, or a type JSON cannot express: left to the code that uses it
    if not ok:
        raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "an object", type(None): "null"}
    text = names.get(origin, getattr(hint, "__name__", str(hint)))
    args = typing.get_args(hint)
    if origin in (list, tuple) and args:
        text += f" of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return text


def check_fields(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data``'s keys and value types checked against dataclass ``cls``; nested dataclasses
    are built. ``where`` is the key path of ``data`` ("" at the top), for the messages."""
    label = f"config.{where}" if where else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    retired = getattr(cls, "RETIRED_KEYS", frozenset())
    data = {key: value for key, value in data.items() if key not in retired}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, key)
        else:
            kwargs[name] = check_value(value, hints[name], key)
    return kwargs


def _build(cls, data: dict[str, Any], where: str):
    return cls(**check_fields(cls, data, where))
