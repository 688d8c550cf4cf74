"""Command-line flags of the DLRM job and their checks.

Every flag lands in one ``Config`` dataclass; ``Config.check()`` rejects bad
combinations with a ``ConfigError`` naming the flag, before any process group,
table or file is created.
"""
import argparse
import dataclasses
import math
import os

# Rows of the 26 Criteo (Kaggle display advertising) categorical features, the
# shape the synthetic tables follow once capped by --max-rows.
CRITEO_TABLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
NUM_DENSE = 13
NUM_SPARSE = len(CRITEO_TABLE_ROWS)

# MLPerf Training DLRMv2's multi-hot bag size of each categorical feature (--multi-hot).
MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)

# --model dcnv2: MLPerf DLRMv2's shape and optimizers, its tables capped at
# 500k rows (5 tables at the cap + 21 smaller ones: 3.07M rows x 128 x 4 bytes
# = 1.6 GB of fp32 or bf16-split tables, a size a 24 GiB machine holds).
# lr 0.004 for both is MLPerf's; the 50-step warmup keeps Adagrad's first,
# full-size steps from blowing up the cross network at small batches. Batch
# 512 (MLPerf: 65536) so that 300 steps take minutes on 2 cores.
# These replace the DLRM defaults of every flag not given on the command line.
MODEL_DEFAULTS = {
    "dlrm": {},
    "dcnv2": dict(embedding_dim=128, bottom_mlp="512-256-128", top_mlp="1024-1024-512-256-1",
                  max_rows=500_000, optimizer="adagrad", emb_optimizer="rowwise_adagrad",
                  lr=0.004, emb_lr=0.004, lr_warmup_steps=50, batch_size=512),
}


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
    # the model (see MODEL_DEFAULTS and the epilog) and the lr schedule
    model: str = _flag("dlrm", "dlrm (pairwise dot interaction) or dcnv2 (MLPerf DLRMv2: "
                       "low-rank cross network; its own defaults, below)")
    cross_layers: int = _flag(3, "dcnv2: cross layers")
    cross_rank: int = _flag(512, "dcnv2: rank of each cross layer (V: rank x n, W: n x rank, "
                            "n = 27 x --embedding-dim)")
    multi_hot: bool = _flag(False, "MLPerf DLRMv2's bag sizes per feature (sum pooling) "
                            "instead of one lookup")
    lr_warmup_steps: int = _flag(0, "learning rates ramp linearly from lr/N at step 1 to lr "
                                 "at step N")
    lr_decay_start: int = _flag(0, "after this step the learning rates decay polynomially "
                                "(power 2) to 0 (0: no decay)")
    lr_decay_steps: int = _flag(0, "length of the decay in steps")

    def mlp_sizes(self):
        return _mlp(self.bottom_mlp, "--bottom-mlp"), _mlp(self.top_mlp, "--top-mlp")

    def bag_sizes(self):
        """Lookups per sample of each of the 26 features (1 each unless --multi-hot)."""
        return list(MULTI_HOT_SIZES) if self.multi_hot else [1] * NUM_SPARSE

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
        choices = dict(model=tuple(MODEL_DEFAULTS), data=("synthetic", "criteo-tsv"),
                       optimizer=("sgd", "adagrad"), bad_lines=("skip", "fail"),
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
            what = "the dot interaction" if self.model == "dlrm" else "the cross network's input"
            raise ConfigError(f"--bottom-mlp must end in --embedding-dim ({self.embedding_dim}) "
                              f"for {what}, got {self.bottom_mlp}")
        if top[-1] != 1:
            raise ConfigError(f"--top-mlp must end in 1 (the click logit), got {self.top_mlp}")
        for name in ("steps", "batch_size", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "emb_lr", "zipf", "timeout"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive finite number, "
                                  f"got {getattr(self, name)}")
        for name in ("cross_layers", "cross_rank"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "lr_decay_start", "lr_decay_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if bool(self.lr_decay_start) != bool(self.lr_decay_steps):
            raise ConfigError("--lr-decay-start and --lr-decay-steps go together (both 0: no decay)")
        if self.lr_decay_start and self.lr_decay_start < self.lr_warmup_steps:
            raise ConfigError(f"--lr-decay-start ({self.lr_decay_start}) is inside the warmup "
                              f"(--lr-warmup-steps {self.lr_warmup_steps})")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "threads", "max_rows",
                     "max_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.max_seconds):
            raise ConfigError(f"--max-seconds must be finite (0: no limit), got {self.max_seconds}")
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


_EPILOG = ("--model dcnv2 is MLPerf Training DLRMv2's model: embedding dim 128, bottom MLP "
           "13-512-256-128, a low-rank cross network (3 layers, rank 512) over the concatenated "
           "dense and pooled vectors, top MLP 1024-1024-512-256-1, Adagrad (dense) and row-wise "
           "Adagrad (tables) at lr 0.004 with a 50-step warmup; scaled to a 2-core, 24 GiB "
           "machine: tables capped at --max-rows 500000 (3.07M rows, 1.6 GB fp32 or "
           "bf16-split), --batch-size 512. Flags given on the command line override these "
           "model defaults (the defaults shown above are --model dlrm's). --multi-hot gives the "
           "26 features MLPerf DLRMv2's bag sizes " + ",".join(map(str, MULTI_HOT_SIZES)) +
           " (sum pooling).")


def parser(default=None):
    """The argparse parser of every Config field, with its help text and default.
    `default` replaces every flag's default when given (argparse.SUPPRESS: only
    the flags on the command line are set)."""
    p = argparse.ArgumentParser(prog="dlrm", description="Train DLRM with ipex_train on CPUs.",
                                epilog=_EPILOG)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        shown = f" (default: {f.default})" if f.default not in ("", False) else ""
        value = f.default if default is None else default
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=value, help=f.metadata["help"] + shown)
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=value,
                           metavar=type(f.default).__name__.upper(),
                           help=f.metadata["help"] + shown)
    p.add_argument("--fp32", dest="dtype", action="store_const", const="fp32",
                   help="same as --dtype fp32", **({} if default is None else dict(default=default)))
    return p


def model_config(model="dlrm", **flags):
    """A Config of `model` with MODEL_DEFAULTS applied, then `flags` (unchecked)."""
    if model not in MODEL_DEFAULTS:
        raise ConfigError(f"--model: must be one of {tuple(MODEL_DEFAULTS)}, got {model!r}")
    return Config(**dict(MODEL_DEFAULTS[model], model=model, **flags))


def parse_args(argv=None):
    """Parses command-line flags into a Config (unchecked); --model's defaults
    (MODEL_DEFAULTS) fill every flag not given."""
    cfg = vars(parser().parse_args(argv))
    given = vars(parser(argparse.SUPPRESS).parse_args(argv))
    for k, v in MODEL_DEFAULTS.get(cfg["model"], {}).items():
        if k not in given:
            cfg[k] = v
    return Config(**cfg)
