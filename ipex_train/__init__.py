"""ipex_train: a CPU training accelerator for PyTorch.

    import ipex_train
    model, optimizer = ipex_train.optimize(model, optimizer, dtype=torch.bfloat16)

Submodules: ``ipex_train.optim`` (fused optimizers), ``ipex_train.sparse``
(sparse-add, fused embedding bags), ``ipex_train.distributed`` (the "ccl"
process group), ``ipex_train.torchrec`` (TorchRec integration).
"""
from . import ops  # noqa: F401  (loads the native library, registers fake kernels)
from ._isa import available_isas, best_isa, force_isa, isa
from . import optim

__version__ = "0.1.0"

__all__ = ["isa", "best_isa", "available_isas", "force_isa", "optim", "__version__"]

# BF16 split training (ipex_train/_optimize.py, ipex_train/bf16_*.py)
from . import bf16_split  # noqa: E402,F401
from ._optimize import optimize  # noqa: E402
from .bf16_checkpoint import fp32_state_dict, load_fp32_state_dict  # noqa: E402

__all__ += ["optimize", "fp32_state_dict", "load_fp32_state_dict"]
