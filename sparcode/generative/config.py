"""TIGER's settings in one dataclass, saved as `tiger/config.json` in the run directory.

Kept apart from `sparcode.config.RunConfig` because the run directory's top-level
config.json belongs to the lead's RunConfig; `from_run_config` maps the keys the two share.
Unknown keys are an error, as everywhere in sparcode.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from sparcode.generative.rqvae import RQVAEConfig


SELECTABLE = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")  # what each epoch's validation measures


@dataclass
class TigerConfig:
    dataset: str = "beauty"
    seed: int = 0
    max_history: int = 20  # items per encoder input, most recent last (TIGER: 20)
    # seq2seq model. Paper: 4+4 layers, 6 heads, d 128, MLP 1024; smaller here to fit a CPU budget.
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff_dim: int = 512
    dropout: float = 0.1
    user_buckets: int = 2000  # hashed user tokens (paper: 2000)
    # training
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300
    # 0: open-ended, inverse-square-root decay after warm-up, ended by patience or max_minutes.
    # N: a fixed step budget; the rate falls linearly to 0 at step N, where training ends.
    # `epochs` and `patience` then do not apply (ending early would cut the decay short);
    # validation still picks the best epoch, and max_minutes still stops the run.
    total_steps: int = 0
    grad_clip: float = 1.0
    patience: int = 3
    eval_users: int = 2000  # validation users per epoch (0 = all)
    # The validation metric that picks the best epoch (and, open-ended, drives patience).
    select_on: str = "recall@10"
    max_minutes: float = 0.0  # stop training after this wall time (0 = no limit)
    steps_per_epoch: int = 0  # 0 = one pass over all windows
    # bfloat16 autocast for the training step where the CPU/GPU has bf16 matmul; ignored
    # elsewhere, where emulated bf16 is slower than float32. On AMX a 4+4 step took 0.48 s
    # against 0.66, and the 7,500-step run's validation curve matched float32's (best R@10 0.092
    # vs 0.0935; results/beauty/tiger/step_budget_runs.json). Evaluation and search run in float32.
    bf16: bool = True
    # retrieval
    beam_size: int = 20  # at least max K asked for at evaluation; raised to it when smaller
    cold_fraction: float = 0.05  # items held out of training entirely (still get semantic IDs)
    cold_slots: float = 0.1  # ε: share of the top-K that prefix-matched cold items may take
    cold_prefix_depth: int = 3  # match cold items on (c0, c1, c2); falls back to (c0, c1)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)

    def __post_init__(self):
        if self.select_on not in SELECTABLE:
            raise ValueError(f"tiger.select_on must be one of {', '.join(SELECTABLE)}, not {self.select_on!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TigerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TIGER config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        from sparcode.config import check_fields

        # Types by annotation, as for RunConfig (a "30" or 1.5 for epochs fails here, naming
        # the key, not deep in training); check_fields builds the nested RQVAEConfig too.
        rqvae = data.get("rqvae")
        data = check_fields(cls, {k: v for k, v in data.items() if k != "rqvae"}, "tiger")
        if isinstance(rqvae, RQVAEConfig):
            data["rqvae"] = rqvae
        elif rqvae is not None:
            data["rqvae"] = RQVAEConfig(**check_fields(RQVAEConfig, rqvae, "tiger.rqvae"))
        cfg = cls(**data)
        cfg.check_ranges()
        return cfg

    def check_ranges(self) -> None:
        """Values of the right type that would break training or make it do nothing."""
        from sparcode.config import POSITIVE, PROBABILITY, at_least, check_bounds

        lows = {"max_history": 1, "d_model": 1, "heads": 1, "encoder_layers": 1, "decoder_layers": 1,
                "ff_dim": 1, "user_buckets": 1, "epochs": 1, "batch_size": 1, "warmup_steps": 0,
                "total_steps": 0, "grad_clip": 0, "patience": 1, "eval_users": 0, "max_minutes": 0,
                "steps_per_epoch": 0, "beam_size": 1, "cold_prefix_depth": 1, "seed": 0,
                **{f"rqvae.{key}": 1 for key in ("input_dim", "latent_dim", "levels", "codes", "epochs",
                                                 "batch_size")}}
        check_bounds(self, {**{key: at_least(low) for key, low in lows.items()}, "lr": POSITIVE,
                            "dropout": PROBABILITY, "cold_fraction": PROBABILITY,
                            "cold_slots": ("in [0, 1]", lambda v: 0 <= v <= 1)}, prefix="tiger.")
        if self.d_model % self.heads:
            raise ValueError(f"tiger.d_model ({self.d_model}) must be divisible by tiger.heads ({self.heads})")
        rq = self.rqvae
        if rq.lr <= 0 or any(width < 1 for width in rq.hidden):
            raise ValueError(f"tiger.rqvae needs lr > 0 and hidden widths ≥ 1, got lr {rq.lr!r}, hidden {rq.hidden!r}")

    @classmethod
    def from_run_config(cls, run_cfg) -> "TigerConfig":
        """The shared keys of a `sparcode.config.RunConfig`; the rest keep TIGER's defaults."""
        train = run_cfg.train
        cfg = cls(dataset=run_cfg.dataset, seed=run_cfg.seed, max_history=train.max_history, epochs=train.epochs,
                  batch_size=train.batch_size, lr=train.lr, patience=train.patience)
        if train.eval_users:
            cfg.eval_users = train.eval_users
        cfg.rqvae.seed = run_cfg.seed
        extra = dict(getattr(run_cfg, "tiger", None) or {})
        if "dataset" in extra:
            from sparcode.config import ConfigError, same_dataset

            if not same_dataset(str(extra["dataset"]), str(run_cfg.dataset)):
                # The run trains on its own dataset; a second one here would only be recorded (and
                # later picked by `semantic-ids` as where the IDs came from).
                raise ConfigError(f"tiger.dataset {extra['dataset']!r} is not the run's dataset "
                                  f"{run_cfg.dataset!r}; name the dataset once, with --dataset or the top-level key")
        if extra:
            data = cfg.to_dict()
            if isinstance(extra.get("rqvae"), dict):
                extra["rqvae"] = {**data["rqvae"], **extra["rqvae"]}
            try:
                cfg = cls.from_dict({**data, **extra})
            except (TypeError, ValueError) as err:
                from sparcode.config import ConfigError

                message = str(err)  # messages from the type and range checks name their key already
                raise ConfigError(message if message.startswith(("tiger.", "config.tiger")) else f"config.tiger: {message}") from None
        return cfg

    @classmethod
    def coerce(cls, config) -> "TigerConfig":
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        if hasattr(config, "train") and hasattr(config, "model"):
            return cls.from_run_config(config)
        raise TypeError(f"expected a TigerConfig, a dict or a RunConfig, got {type(config).__name__}")
