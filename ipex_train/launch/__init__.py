"""ipex-train-run, the MPI launcher: ``ipex-train-run ...`` or
``python -m ipex_train.launch ...`` (see ``run.py`` for the options).

The per-rank start-up (``_rank.py``) is run by path, so pinning a rank
imports neither ipex_train nor torch.
"""
from .run import main

__all__ = ["main"]
