"""ISA detection, forcing, and the no-AVX-512-outside-AVX-512-code check."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import ipex_train

LIB = os.path.join(os.path.dirname(ipex_train.__file__), "_C.so")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_isa_is_a_known_level():
    assert ipex_train.isa() in ipex_train.available_isas()
    assert ipex_train.best_isa() == ipex_train.available_isas()[-1]


def test_force_isa_clamps_and_restores():
    before = ipex_train.isa()
    with ipex_train.force_isa("scalar") as used:
        assert used == "scalar" and ipex_train.isa() == "scalar"
    assert ipex_train.isa() == before
    with ipex_train.force_isa("avx512_bf16") as used:
        assert used == ipex_train.best_isa()
    with pytest.raises(ValueError, match="unknown ISA"):
        with ipex_train.force_isa("sse9"):
            pass


def _isa_in_subprocess(value):
    env = dict(os.environ, IPEX_TRAIN_ISA=value)
    code = "import warnings; warnings.simplefilter('always'); import ipex_train; print(ipex_train.isa())"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512", "avx512_bf16"])
def test_env_var_forces_level_clamped(level):
    got, err = _isa_in_subprocess(level)
    levels = ipex_train.available_isas()
    if level in levels:
        assert got == level
        assert "RuntimeWarning" not in err
    else:
        assert got == ipex_train.best_isa()
        assert "more than this CPU supports" in err


def test_env_var_unknown_level_warns():
    got, err = _isa_in_subprocess("sse9")
    assert got == ipex_train.best_isa()
    assert "not one of" in err


# AVX-512 shows as zmm or opmask registers, or EVEX-only mnemonics on xmm/ymm.
_AVX512 = re.compile(r"%zmm\d|%k[0-7]\b|\{%k|vpermt2|vpternlog|vcvtne2ps2bf16|vcvtneps2bf16|"
                     r"vdpbf16ps|vpcompress|vpexpand|vscalef|vrndscale|vrcp14|vrsqrt14|vpmov[a-z]*b\b")


def _functions(lib):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", lib],
                         capture_output=True, text=True, check=True).stdout
    name, body = None, []
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            if name:
                yield name, body
            name, body = m.group(1), []
        elif name:
            body.append(line)
    if name:
        yield name, body


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_no_avx512_outside_avx512_levels():
    """Code for the scalar and AVX2 levels, and everything shared (dispatch,
    op wrappers, inline helpers the linker deduplicated), has no AVX-512."""
    bad, kernels_seen = [], set()
    for name, body in _functions(LIB):
        if "ipex_train::avx512" in name:
            continue
        for level in ("scalar", "avx2"):
            if f"ipex_train::{level}::" in name:
                kernels_seen.add(level)
        if any(_AVX512.search(line) for line in body):
            bad.append(name)
    assert kernels_seen == {"scalar", "avx2"}, "per-ISA kernels not found by name"
    assert not bad, f"AVX-512 instructions outside AVX-512 code: {bad[:10]}"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_avx512_levels_do_use_avx512():
    """Sanity check of the disassembly test itself: the AVX-512 build has zmm code."""
    found = any(_AVX512.search(line)
                for name, body in _functions(LIB) if "ipex_train::avx512::" in name
                for line in body)
    assert found


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_embedding_kernels_keep_their_prefetches():
    """The random-row kernels live on software prefetch. GCC once deleted the
    table-row prefetches as dead code (a helper that only prefetches looks
    side-effect free), which made the fused embedding backward 2x slower with
    no other symptom. Each level's copy must keep the table-row prefetches
    (fp32 and split top/trail) as well as the gradient-source ones; counted over
    each kernel and its per-row-width copies (bucket_add<W>, bucket_update<W>,
    ordered_apply<W>), wherever the compiler left them. The entry sort's
    scatter prefetches its output streams (native/ops/bucket_sort.cpp): that too."""
    counts, scatter = {}, 0
    for name, body in _functions(LIB):
        m = re.search(r"ipex_train::(\w+)::(?:\(anonymous namespace\)::)?"
                      r"(?:emb_)?(bucket_add|bucket_update|ordered_apply)[(<]", name)
        if m:
            counts[m.groups()] = counts.get(m.groups(), 0) + sum("prefetch" in line for line in body)
        if "split_entries" in name:
            scatter += sum("prefetch" in line for line in body)
    for level in ("scalar", "avx2", "avx512", "avx512_bf16"):
        assert counts.get((level, "bucket_add"), 0) >= 4, counts
        assert counts.get((level, "bucket_update"), 0) >= 7, counts
        assert counts.get((level, "ordered_apply"), 0) >= 3, counts  # fp32, top, trail rows
    assert scatter >= 2
