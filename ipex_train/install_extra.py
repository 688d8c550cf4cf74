"""Installs what pip's resolver cannot for two of ipex_train's extras: packages
whose published metadata asks for something that must not (or cannot) be
installed, so they go in with --no-deps, then a check that they load.

    pip install "ipex_train[ccl]"        &&  python -m ipex_train.install_extra ccl
    pip install "ipex_train[torchrec]"   &&  python -m ipex_train.install_extra torchrec

From a source checkout, before building (the ccl part of the build compiles
against oneCCL's headers), run this file by path; it needs only the stdlib:

    python ipex_train/install_extra.py ccl --devel

ccl       oneccl-cpu 2022.2.0 (libccl.so.1; with --devel also oneccl-cpu-devel,
          the headers). Their metadata asks for libfabric>=2.6, which no index
          has; pip's mpich (in the ccl extra) bundles the libfabric that
          oneCCL's OFI transport loads. (oneccl without -cpu is a SYCL build
          that crashes on CPU-only machines.)
torchrec  torchrec 1.8.0. Its metadata asks for fbgemm-gpu, the CUDA build,
          which ships the same fbgemm_gpu module as fbgemm-gpu-cpu 1.8.0 (in the
          torchrec extra) and would replace it.

Every pip call carries the constraint torch==<installed version>: nothing here
can move torch.
"""
import argparse
import importlib.metadata as metadata
import os
import subprocess
import sys
import tempfile

ONECCL = "2022.2.0"
TORCHREC = "1.8.0"


def _pip_install(pkgs, dry_run, quiet=False):
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *pkgs]
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    print("[install_extra] " + " ".join(cmd) +
          (f"  (constraint torch=={torch_version})" if torch_version else ""), flush=True)
    if dry_run:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        if torch_version:
            f.write(f"torch=={torch_version}\n")
    try:
        subprocess.check_call(cmd + ["-c", f.name])
    finally:
        os.unlink(f.name)


def _missing(paths):
    return [p for p in paths if not os.path.exists(os.path.join(sys.prefix, p))]


def ccl(devel, dry_run, quiet):
    pkgs = [f"oneccl-cpu=={ONECCL}"] + ([f"oneccl-cpu-devel=={ONECCL}"] if devel else [])
    _pip_install(pkgs, dry_run, quiet)
    if dry_run:
        return 0
    missing = _missing(["lib/libccl.so.1"] + (["include/oneapi/ccl.hpp"] if devel else []))
    if missing:
        print(f"[install_extra] error: missing under {sys.prefix} after install: {missing}",
              file=sys.stderr)
        return 1
    if _missing(["lib/mpich/libfabric.so.1"]) and not os.environ.get("FI_ROOT"):
        print("[install_extra] warning: no libfabric: oneCCL's OFI transport needs one "
              "(pip install mpich, or set FI_ROOT to a libfabric install)", file=sys.stderr)
    print(f"[install_extra] oneCCL {ONECCL} in {sys.prefix}")
    return 0


_TORCHREC_CHECK = """
import fbgemm_gpu, torch, torchrec
assert hasattr(torch.ops.fbgemm, "asynchronous_complete_cumsum"), "fbgemm ops missing"
print(f"[install_extra] torchrec {torchrec.__version__} loads on torch {torch.__version__}")
"""


def torchrec(dry_run, quiet):
    _pip_install([f"torchrec=={TORCHREC}"], dry_run, quiet)
    if dry_run:
        return 0
    # a fresh interpreter: this one may have imported torch before the install
    return subprocess.call([sys.executable, "-c", _TORCHREC_CHECK])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ipex_train.install_extra",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("extra", choices=["ccl", "torchrec"])
    p.add_argument("--devel", action="store_true",
                   help="ccl: also oneCCL's headers (needed to build the ccl part from source)")
    p.add_argument("--dry-run", action="store_true", help="print the pip command only")
    p.add_argument("-q", "--quiet", action="store_true", help="pass -q to pip")
    a = p.parse_args(argv)
    if a.extra == "ccl":
        return ccl(a.devel, a.dry_run, a.quiet)
    return torchrec(a.dry_run, a.quiet)


if __name__ == "__main__":
    sys.exit(main())
