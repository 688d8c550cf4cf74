"""Command-line flags of the DLRM job and their checks.

Every flag lands in one ``Config`` dataclass; ``Config.check()`` rejects bad
combinations with a ``ConfigError`` naming the flag, before any process group,
table or file is created.
"""
import argparse
import dataclasses
import os

# Rows of the 26 Criteo (Kaggle display advertising) categorical features, the
# shape the synthetic tables follow once capped by --max-rows.
CRITEO_TABLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
NUM_DENSE = 13
NUM_SPARSE = len(CRITEO_TABLE_ROWS)


class ConfigError(ValueError):
    """A flag value or combination the job cannot run with."""


def _mlp(text, flag):
    try:
        sizes = [int(s) for s in text.split("-")]
    except ValueError:
        raise ConfigError(f"{flag}: expected sizes like 512-256-64, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"{flag}: layer sizes must be positive, got {text!r}")
    return sizes


@dataclasses.dataclass
class Config:
    data: str = "synthetic"            # synthetic | criteo-tsv
    train_file: str = ""
    eval_file: str = ""
    bad_lines: str = "skip"            # skip | fail
    seed: int = 0
    max_rows: int = 100_000            # cap on every table's rows
    table_rows: str = ""               # explicit comma list, overrides the Criteo shape
    zipf: float = 1.1                  # skew of synthetic indices
    embedding_dim: int = 64
    bottom_mlp: str = "512-256-64"     # after the 13 dense inputs; last = embedding_dim
    top_mlp: str = "512-512-256-1"     # after the interaction; last must be 1
    batch_size: int = 2048             # global batch, split across ranks for the MLPs
    steps: int = 1000
    max_seconds: float = 0.0           # stop training after this long (0 = no limit)
    optimizer: str = "sgd"             # MLP optimizer (ipex_train.optim): sgd | adagrad
    lr: float = 0.1                    # MLP learning rate
    emb_lr: float = 0.05
    emb_optimizer: str = "rowwise_adagrad"  # sgd | adagrad | rowwise_adagrad
    dtype: str = "bf16"                # bf16 (split training) | fp32
    compute: str = "auto"              # matmul dtype in bf16 mode: auto | bf16 | fp32
    embeddings: str = "fused"          # fused (ipex_train.sparse) | torch (nn.EmbeddingBag)
    backend: str = "ccl"               # ccl | gloo; used when world size > 1
    eval_every: int = 0                # steps; 0 = only at the end
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_dir: str = ""
    checkpoint_every: int = 0
    resume: bool = False
    threads: int = 0                   # torch threads per rank; 0 = cores / local ranks
    progress: bool = True
    metrics_out: str = ""              # JSON with per-step losses and AUCs (rank 0)

    def mlp_sizes(self):
        return _mlp(self.bottom_mlp, "--bottom-mlp"), _mlp(self.top_mlp, "--top-mlp")

    def table_sizes(self):
        if self.table_rows:
            try:
                rows = [int(s) for s in self.table_rows.split(",")]
            except ValueError:
                raise ConfigError(f"--table-rows: expected comma-separated integers, "
                                  f"got {self.table_rows!r}") from None
            if len(rows) != NUM_SPARSE:
                raise ConfigError(f"--table-rows: need {NUM_SPARSE} tables (one per Criteo "
                                  f"categorical feature), got {len(rows)}")
        else:
            rows = [min(r, self.max_rows) for r in CRITEO_TABLE_ROWS]
        if any(r <= 0 for r in rows):
            raise ConfigError(f"--table-rows/--max-rows: every table needs at least one row, got {rows}")
        return rows

    def check(self, world_size=1):
        """Raises ConfigError naming the first bad flag."""
        choices = dict(data=("synthetic", "criteo-tsv"), optimizer=("sgd", "adagrad"), bad_lines=("skip", "fail"),
                       emb_optimizer=("sgd", "adagrad", "rowwise_adagrad"),
                       dtype=("bf16", "fp32"), compute=("auto", "bf16", "fp32"), embeddings=("fused", "torch"),
                       backend=("ccl", "gloo"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: must be one of {allowed}, "
                                  f"got {getattr(self, name)!r}")
        bottom, top = self.mlp_sizes()
        self.table_sizes()
        if self.embedding_dim <= 0:
            raise ConfigError(f"--embedding-dim must be positive, got {self.embedding_dim}")
        if bottom[-1] != self.embedding_dim:
            raise ConfigError(f"--bottom-mlp must end in --embedding-dim ({self.embedding_dim}) "
                              f"for the dot interaction, got {self.bottom_mlp}")
        if top[-1] != 1:
            raise ConfigError(f"--top-mlp must end in 1 (the click logit), got {self.top_mlp}")
        for name in ("steps", "batch_size", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "emb_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "threads", "max_rows", "max_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.zipf <= 0:
            raise ConfigError(f"--zipf must be positive, got {self.zipf}")
        if self.batch_size < world_size:
            raise ConfigError(f"--batch-size {self.batch_size} is smaller than the world size "
                              f"{world_size}: every rank needs at least one sample")
        if self.data == "criteo-tsv":
            if not self.train_file:
                raise ConfigError("--data criteo-tsv needs --train-file")
            for flag, path in (("--train-file", self.train_file), ("--eval-file", self.eval_file)):
                if path and not os.path.isfile(path):
                    raise ConfigError(f"{flag}: no such file {path!r}")
        if (self.checkpoint_every or self.resume) and not self.checkpoint_dir:
            raise ConfigError("--checkpoint-every/--resume need --checkpoint-dir")
        if self.embeddings == "torch" and self.emb_optimizer == "rowwise_adagrad":
            raise ConfigError("--embeddings torch supports --emb-optimizer sgd or adagrad "
                              "(rowwise_adagrad needs the fused tables)")
        return self


def parse_args(argv=None):
    """Parses command-line flags into a Config (unchecked)."""
    p = argparse.ArgumentParser(prog="dlrm", description="Train DLRM with ipex_train on CPUs.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=f.default)
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default)
    p.add_argument("--fp32", dest="dtype", action="store_const", const="fp32",
                   help="same as --dtype fp32")
    return Config(**vars(p.parse_args(argv)))
