"""The DLRM training job: model set-up, the hybrid-parallel step, evaluation.

Loss scaling, so that any world size trains on the same global-batch mean:
rank r's loss is sum(BCE over its B_r samples) / B * W. DDP averages MLP
gradients over W ranks, which gives d(mean loss)/d(theta); the embedding
exchange's backward divides by W again, so every table sees exactly the
gradient of the global mean. At W = 1 this is the plain mean loss.
"""
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import CheckpointError
from .config import NUM_DENSE, NUM_SPARSE
from .dcn import DCNDenseArch
from .embeddings import LocalTables
from .model import DenseArch
from .schedule import lr_factor
from .parallel import EmbeddingAllToAll, batch_splits, place_tables

import ipex_train


def compute_dtype(cfg):
    """Matmul dtype: bf16 only where asked and the CPU has bf16 dot products."""
    if cfg.dtype == "fp32" or cfg.compute == "fp32":
        return torch.float32
    if cfg.compute == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if ipex_train.best_isa() == "avx512_bf16" else torch.float32


class Trainer:
    """One rank's share of DLRM: its tables, a replica of the MLPs, their optimizers."""

    def __init__(self, cfg, rank=0, world_size=1, group=None):
        self.cfg, self.rank, self.world, self.group = cfg, rank, world_size, group
        rows = cfg.table_sizes()
        bottom, top = cfg.mlp_sizes()
        dim = cfg.embedding_dim
        self.placement = place_tables(rows, world_size)
        dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        self.tables = LocalTables(self.placement[rank], rows, dim, kind=cfg.embeddings,
                                  optimizer=cfg.emb_optimizer, lr=cfg.emb_lr, dtype=dtype,
                                  seed=cfg.seed, bag_sizes=cfg.bag_sizes())
        torch.manual_seed(cfg.seed)  # same MLP weights on every rank and world size
        if cfg.model == "dcnv2":
            dense = DCNDenseArch(NUM_DENSE, NUM_SPARSE, bottom, top, cfg.cross_layers,
                                 cfg.cross_rank, compute_dtype(cfg))
        else:
            dense = DenseArch(NUM_DENSE, NUM_SPARSE, bottom, top, compute_dtype(cfg))
        opt_cls = {"sgd": ipex_train.optim.SGD, "adagrad": ipex_train.optim.Adagrad}[cfg.optimizer]
        opt = opt_cls(dense.parameters(), lr=cfg.lr)
        dense, opt = ipex_train.optimize(dense, opt, dtype=dtype)
        self.dense, self.opt = dense, opt
        self.model = dense
        if world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                dense, process_group=group)
        self.lr_changes = []  # set by load_state_dict

    def _logits(self, batch, model):
        """Logits of this rank's slice of the global batch, and that slice's (start, end)."""
        splits = batch_splits(batch.labels.shape[0], self.world)
        start = sum(splits[:self.rank])
        end = start + splits[self.rank]
        local = self.tables(batch.sparse)
        dim = self.cfg.embedding_dim
        if self.world > 1:  # [B_me, 26, D] in feature order, written by the exchange
            emb = EmbeddingAllToAll.apply(local, self.placement, dim, splits, self.rank,
                                          self.group)
        else:
            emb = local.view(end - start, NUM_SPARSE, dim)
        return model(batch.dense[start:end], emb), start, end

    def set_step(self, step):
        """Sets the learning rates of training step `step` (1-based) by the
        schedule flags (--lr-warmup-steps, --lr-decay-start/--lr-decay-steps)."""
        cfg = self.cfg
        f = lr_factor(step, cfg.lr_warmup_steps, cfg.lr_decay_start, cfg.lr_decay_steps)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * f
        self.tables.lr = cfg.emb_lr * f

    def train_step(self, batch):
        """One step on the global batch; returns this rank's BCE sum (detached)."""
        B = batch.labels.shape[0]
        self.opt.zero_grad(set_to_none=True)
        logits, start, end = self._logits(batch, self.model)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels[start:end], reduction="sum")
        (bce * (self.world / B)).backward()
        self.opt.step()
        self.tables.step()
        return bce.detach()

    def global_sum(self, t):
        """Sum of a tensor over ranks (in place); identity at world size 1."""
        if self.world > 1:
            dist.all_reduce(t, group=self.group)
        return t

    @torch.no_grad()
    def predict(self, batch):
        """Click probabilities [B] of the global batch, on every rank."""
        logits, start, end = self._logits(batch, self.dense)
        out = torch.zeros(batch.labels.shape[0])
        out[start:end] = torch.sigmoid(logits)
        return self.global_sum(out)

    def evaluate(self, batches):
        """(AUC, mean log loss) over `batches` (sklearn's roc_auc_score)."""
        from sklearn.metrics import roc_auc_score

        probs = torch.cat([self.predict(b) for b in batches]).double()
        labels = torch.cat([b.labels for b in batches]).double()
        loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), labels).item()
        if labels.min() == labels.max():
            return float("nan"), loss
        return float(roc_auc_score(labels.numpy(), probs.numpy())), loss

    # ---- checkpoints -------------------------------------------------------
    def state_dict(self):
        """This rank's full training state (our optimizers' state dicts keep the
        bf16-split trail int16 and the rest fp32 on load), learning rates included."""
        state = dict(world_size=self.world, placement=self.placement,
                     dense=self.dense.state_dict(), opt=self.opt.state_dict(),
                     tables=self.tables.state_dict(), emb_lr=self.tables.lr)
        if self.tables.opt is not None:
            state["tables_opt"] = self.tables.opt.state_dict()
        # the base rates (--lr, --emb-lr), not this step's scheduled ones
        for g in state["opt"]["param_groups"]:
            g["lr"] = self.cfg.lr
        for g in state.get("tables_opt", {}).get("param_groups", []):
            g["lr"] = self.cfg.emb_lr
        if state["emb_lr"] is not None:
            state["emb_lr"] = self.cfg.emb_lr
        return state

    def load_state_dict(self, state, source="checkpoint"):
        """Restores `state` (from `source`, for messages); the learning rates stay
        this run's --lr and --emb-lr; lr_changes lists [(flag, saved, now)] where they differ."""
        if state.get("world_size") != self.world or state.get("placement") != self.placement:
            raise CheckpointError(f"{source} was written at world size {state.get('world_size')}, "
                                  f"this run has {self.world}: resume with the same world size")
        self.dense.load_state_dict(state["dense"])
        self.opt.load_state_dict(state["opt"])
        self.tables.load_state_dict(state["tables"])
        if self.tables.opt is not None:
            self.tables.opt.load_state_dict(state["tables_opt"])
        changed = []
        saved_lr = state["opt"]["param_groups"][0]["lr"]
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr
        if saved_lr != self.cfg.lr:
            changed.append(("--lr", saved_lr, self.cfg.lr))
        if state["emb_lr"] not in (None, self.cfg.emb_lr):
            changed.append(("--emb-lr", state["emb_lr"], self.cfg.emb_lr))
        self.tables.lr = self.cfg.emb_lr
        self.lr_changes = changed


def default_threads():
    """OMP_NUM_THREADS when the launcher set it (ipex-train-run plans cores per
    rank), else cores per local rank (at least 1) from its local-size variable."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    local = 1
    for var in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            local = int(os.environ[var])
            break
    return max(1, (os.cpu_count() or 1) // local)
