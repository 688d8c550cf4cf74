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


def _flag(default, help):
    """A Config field; `help` is its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Config:
    data: str = _flag("synthetic", "training data: synthetic (built-in Criteo-like generator) "
                      "or criteo-tsv (--train-file)")
    train_file: str = _flag("", "Criteo TSV file to train on (label, I1..I13, C1..C26)")
    eval_file: str = _flag("", "Criteo TSV file for evaluation (default: --train-file)")
    bad_lines: str = _flag("skip", "a malformed TSV line: skip (reported once with its line "
                           "number) or fail")
    seed: int = _flag(0, "seed of the model's initial weights and the synthetic data")
    max_rows: int = _flag(100_000, "cap on every table's rows (tables follow Criteo's 26 sizes)")
    table_rows: str = _flag("", "all 26 table sizes, comma-separated (overrides --max-rows)")
    zipf: float = _flag(1.1, "skew of the synthetic indices (Zipf exponent)")
    embedding_dim: int = _flag(64, "embedding dimension")
    bottom_mlp: str = _flag("512-256-64", "bottom MLP layer sizes after the 13 dense inputs; "
                            "the last must equal --embedding-dim")
    top_mlp: str = _flag("512-512-256-1", "top MLP layer sizes after the interaction; the last "
                         "must be 1")
    batch_size: int = _flag(2048, "global batch size, split across ranks for the MLPs")
    steps: int = _flag(1000, "train until this step (counted from 0, also on --resume)")
    max_seconds: float = _flag(0.0, "stop training after this many seconds (0: no limit)")
    optimizer: str = _flag("sgd", "MLP optimizer (ipex_train.optim): sgd or adagrad")
    lr: float = _flag(0.1, "MLP learning rate (on --resume this flag, not the checkpoint, "
                      "decides)")
    emb_lr: float = _flag(0.05, "embedding learning rate (on --resume this flag, not the "
                          "checkpoint, decides)")
    emb_optimizer: str = _flag("rowwise_adagrad", "embedding update: sgd, adagrad or "
                               "rowwise_adagrad")
    dtype: str = _flag("bf16", "bf16 (split storage, the fp32 master bits kept) or fp32")
    compute: str = _flag("auto", "matmul dtype in bf16 mode: auto (bf16 where the CPU has "
                         "AVX-512-BF16), bf16 or fp32")
    embeddings: str = _flag("fused", "tables: fused (ipex_train.sparse) or torch "
                            "(nn.EmbeddingBag(sparse=True) + a torch optimizer)")
    backend: str = _flag("ccl", "process group when launched with several ranks: ccl or gloo")
    timeout: float = _flag(600.0, "seconds a collective may wait for the other ranks before "
                           "the job fails (a dead or hung rank)")
    eval_every: int = _flag(0, "evaluate every this many steps (0: only at the end)")
    eval_batches: int = _flag(8, "held-out batches per evaluation")
    log_every: int = _flag(10, "steps between loss reductions (and --max-seconds checks)")
    checkpoint_dir: str = _flag("", "directory of the checkpoints (step_<N>/rank<r>.pt and "
                                "`latest`)")
    checkpoint_every: int = _flag(0, "save a checkpoint every this many steps (0: never)")
    keep_checkpoints: int = _flag(2, "newest checkpoints kept in --checkpoint-dir, older ones "
                                  "are deleted (0: keep all)")
    resume: bool = _flag(False, "continue from --checkpoint-dir's latest checkpoint, if any")
    threads: int = _flag(0, "torch threads per rank (0: $OMP_NUM_THREADS or cores / local "
                         "ranks)")
    progress: bool = _flag(True, "show a progress bar on rank 0")
    metrics_out: str = _flag("", "write per-step losses and AUCs to this JSON file (rank 0)")

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
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be positive (seconds), got {self.timeout}")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "threads", "max_rows",
                     "max_seconds"):
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


def parser():
    """The argparse parser of every Config field, with its help text and default."""
    p = argparse.ArgumentParser(prog="dlrm", description="Train DLRM with ipex_train on CPUs.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        shown = f" (default: {f.default})" if f.default not in ("", False) else ""
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=f.default, help=f.metadata["help"] + shown)
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default,
                           metavar=type(f.default).__name__.upper(),
                           help=f.metadata["help"] + shown)
    p.add_argument("--fp32", dest="dtype", action="store_const", const="fp32",
                   help="same as --dtype fp32")
    return p


def parse_args(argv=None):
    """Parses command-line flags into a Config (unchecked)."""
    return Config(**vars(parser().parse_args(argv)))
