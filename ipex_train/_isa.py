"""Which ISA level the native kernels run at."""
import contextlib
import os
import warnings

import torch

from . import _native

LEVELS = ("scalar", "avx2", "avx512", "avx512_bf16")


def _check_env():
    want = os.environ.get("IPEX_TRAIN_ISA")
    if not want:
        return
    if want not in LEVELS:
        warnings.warn(
            f"IPEX_TRAIN_ISA={want!r} is not one of {', '.join(LEVELS)}; using "
            f"{torch.ops.ipex_train.isa()}", RuntimeWarning, stacklevel=3)
    elif LEVELS.index(want) > LEVELS.index(best_isa()):
        warnings.warn(
            f"IPEX_TRAIN_ISA={want} asks for more than this CPU supports; using "
            f"{torch.ops.ipex_train.isa()}", RuntimeWarning, stacklevel=3)


def isa() -> str:
    """The ISA level the kernels use now: 'scalar', 'avx2', 'avx512' or 'avx512_bf16'.

    Chosen once at import from the running CPU; ``IPEX_TRAIN_ISA`` forces a
    lower level (a higher one than the CPU has is clamped, with a warning).
    """
    return torch.ops.ipex_train.isa()


def best_isa() -> str:
    """The best level the running CPU supports."""
    return torch.ops.ipex_train.best_isa()


def available_isas():
    """Every level this CPU can run, lowest first."""
    return LEVELS[: LEVELS.index(best_isa()) + 1]


@contextlib.contextmanager
def force_isa(level: str):
    """Testing aid: run the body at `level` (clamped to the CPU), then restore."""
    if level not in LEVELS:
        raise ValueError(f"unknown ISA level {level!r}; expected one of {LEVELS}")
    before = isa()
    torch.ops.ipex_train._set_isa(level)
    try:
        yield isa()
    finally:
        torch.ops.ipex_train._set_isa(before)


_native.load()
_check_env()
