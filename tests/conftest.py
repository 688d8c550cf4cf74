"""Shared fixtures: ISA levels and thread counts to run kernels under."""
import pytest
import torch

import ipex_train

ALL_LEVELS = ("scalar", "avx2", "avx512", "avx512_bf16")


def isa_params():
    """pytest params for every ISA level; levels the CPU lacks are skipped."""
    have = set(ipex_train.available_isas())
    return [pytest.param(level, marks=() if level in have else
                         pytest.mark.skip(reason=f"CPU lacks {level}")) for level in ALL_LEVELS]


@pytest.fixture(params=isa_params())
def isa_level(request):
    """Runs the test with the kernels forced to one ISA level."""
    with ipex_train.force_isa(request.param) as used:
        assert used == request.param
        yield used


@pytest.fixture
def threads():
    """Sets torch's thread count for the body; restores it afterwards."""
    before = torch.get_num_threads()

    def set_(n):
        torch.set_num_threads(n)

    yield set_
    torch.set_num_threads(before)
