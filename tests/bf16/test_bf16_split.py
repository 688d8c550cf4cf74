"""The split/join bit partition (ipex_train.bf16_split)."""
import pytest
import torch

from ipex_train import bf16_split


def _special_values():
    bits = torch.tensor([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000,
                         0x7F800001, 0xFFFFFFFF, 0x00000001, 0x807FFFFF, 0x3F80FFFF,
                         0x7F7FFFFF, 0x0000FFFF, 0x3F7F8000], dtype=torch.int64)
    special = bits.to(torch.int32).view(torch.float32)
    random = torch.randint(-2**31, 2**31 - 1, (100003,), generator=torch.Generator().manual_seed(0),
                           dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([special, random])


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (2, 3, 4), ()])
def test_round_trip_is_exact_for_every_bit_pattern(shape):
    w = _special_values()[: max(1, torch.Size(shape).numel())][: torch.Size(shape).numel()]
    w = w.reshape(shape)
    top, trail = bf16_split.split(w)
    assert top.dtype == torch.bfloat16 and trail.dtype == torch.int16
    assert top.shape == w.shape == trail.shape
    back = bf16_split.join(top, trail)
    assert torch.equal(back.view(torch.int32), w.view(torch.int32))


def test_top_is_truncation_and_trail_the_low_bits():
    w = _special_values()
    u = w.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    top, trail = bf16_split.split(w)
    assert torch.equal(top.view(torch.int16).to(torch.int64) & 0xFFFF, u >> 16)
    assert torch.equal(trail.to(torch.int64) & 0xFFFF, u & 0xFFFF)
    finite = torch.isfinite(w)
    assert bool((top.float()[finite].abs() <= w[finite].abs()).all())  # toward zero


def test_split_of_non_contiguous_input():
    w = torch.randn(6, 4).t()
    top, trail = bf16_split.split(w)
    assert torch.equal(bf16_split.join(top, trail), w)


def test_bad_inputs():
    with pytest.raises(TypeError, match="float32"):
        bf16_split.split(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="bfloat16"):
        bf16_split.join(torch.zeros(3), torch.zeros(3, dtype=torch.int16))
    with pytest.raises(TypeError, match="int16"):
        bf16_split.join(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="shape"):
        bf16_split.join(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.int16))
