"""DLRM trained with ipex_train: hybrid parallel (tables model-parallel, MLPs
data-parallel), bf16-split by default, fused embedding updates.

    ipex-train-run --nproc-per-node 2 examples/dlrm/train.py [flags]

Modules: config (flags and their checks), data (synthetic Criteo-like batches
and the Criteo TSV reader), model (MLPs + dot interaction), embeddings (the
rank-local tables and the all_to_all exchange), parallel (process group set-up),
train (the loop, evaluation, checkpoints).
"""
