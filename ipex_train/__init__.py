"""ipex_train: a CPU training accelerator for PyTorch.

    import ipex_train
    model, optimizer = ipex_train.optimize(model, optimizer, dtype=torch.bfloat16)

Submodules: ``ipex_train.optim`` (fused optimizers), ``ipex_train.sparse``
(sparse-add, fused embedding bags), ``ipex_train.distributed`` (the "ccl"
process group; imported on demand, it registers the backend), and
``ipex_train.torchrec`` (TorchRec integration, imported on demand).
"""
from . import _ops  # noqa: F401  (loads the native library, registers fake kernels)
from ._isa import available_isas, best_isa, force_isa, isa
from . import optim
from . import sparse  # sparse-add, sparse optimizer rules, fused embeddings
from . import nn  # model ops: nn.functional.interaction
from . import bf16_split  # noqa: F401
from ._optimize import optimize
from .bf16_checkpoint import fp32_state_dict, load_fp32_state_dict
from .version import __version__

__all__ = ["isa", "best_isa", "available_isas", "force_isa", "optim", "sparse", "nn", "optimize",
           "fp32_state_dict", "load_fp32_state_dict", "__version__"]
