"""The native build of ipex_train (metadata: pyproject.toml).

build_ext runs CMakeLists.txt with the torch of the environment that runs it:
- in place (`python setup.py build_native`, `pip install -e .`): one
  persistent directory, build/inplace, incremental with ninja; the libraries
  land in the source tree (ipex_train/_C.so, ...);
- otherwise (`pip install .`, `pip wheel .`): build/env-<hash of the Python
  environment and torch>, so environments sharing a checkout never reuse each
  other's CMake cache; with pip's build isolation (torch in a throw-away
  overlay) a temporary directory.
It configures again whenever the environment, torch, the ccl switch or the
presence of oneCCL changed. Both directories sit at the same depth, so
ccache (CCACHE_BASEDIR) serves one's objects to the other.

Switches (environment variables):
  IPEX_TRAIN_CCL=auto|on|off  the oneCCL process group: auto (default) builds
        it when oneCCL is installed and says so when not; on fails without it;
        off skips it.
  IPEX_TRAIN_BUILD_JOBS=N     parallel compiles (default: all cores).
  IPEX_TRAIN_SKIP_NATIVE=1    build nothing native (metadata-only installs).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Command, Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CCL_MODES = ("auto", "on", "off")


class BuildError(SystemExit):
    def __init__(self, msg):
        super().__init__(f"\nipex_train build: error: {msg}\n")


def _log(msg):
    print(f"[ipex_train build] {msg}", flush=True)


def _tool(name):
    """cmake / ninja: the pip package's binary (build requirement), else PATH."""
    try:
        mod = __import__(name)
        exe = os.path.join(mod.CMAKE_BIN_DIR if name == "cmake" else mod.BIN_DIR, name)
        if os.path.exists(exe):
            return exe
    except (ImportError, AttributeError):
        pass
    exe = shutil.which(name)
    if exe is None:
        raise BuildError(f"{name} not found: `pip install cmake ninja` (or build with pip's "
                         "build isolation, which installs them)")
    return exe


_ENV_TORCH = """
import importlib.metadata as m, importlib.util as u, os
s = u.find_spec("torch")
print(os.path.realpath(os.path.dirname(s.origin)) if s else "", m.version("torch") if s else "")
"""


def _env_torch():
    """(dir, version) of the torch the environment's Python imports on its own,
    outside pip's build isolation (which hides the environment's packages
    through PYTHONPATH: -I and no PYTHONPATH see past it); ("", "") if none."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", _ENV_TORCH], capture_output=True,
                         text=True, env=env).stdout.split()
    return (out[0], out[1]) if len(out) == 2 else ("", "")


def _torch():
    """(torch module, isolated): isolated when the build's torch is not the one
    the environment imports (pip's build isolation); refuses one whose version
    differs from the environment's."""
    try:
        import torch
    except ImportError as e:
        raise BuildError(
            f"torch is not importable ({e}). Install torch>=2.13,<2.14 into the environment "
            "first (`pip install torch==2.13.0`) and build with `pip install "
            "--no-build-isolation .`, or let pip's build isolation install one.") from e
    here = os.path.realpath(os.path.dirname(torch.__file__))
    env_dir, env_version = _env_torch()
    if env_dir == here:
        return torch, False
    if env_version and env_version.split("+")[0] != torch.__version__.split("+")[0]:
        raise BuildError(
            f"the build sees torch {torch.__version__} ({here}) but this environment "
            f"has torch {env_version}: the extension must be built against the torch it "
            "will run with. With pip, build with `pip install --no-build-isolation .` (needs "
            "setuptools, cmake and ninja installed: `pip install setuptools cmake ninja`).")
    _log(f"building against torch {torch.__version__} at {here}, not the environment's own"
         + (f" (which is the same version, {env_version})" if env_version else
            " (the environment has none yet)") + ": pip's build isolation")
    return torch, True


def _ccl_mode():
    mode = os.environ.get("IPEX_TRAIN_CCL", "auto").strip().lower()
    if mode not in CCL_MODES:
        raise BuildError(f"IPEX_TRAIN_CCL={mode!r}: expected one of {', '.join(CCL_MODES)}")
    return mode


def _oneccl_present():
    return all(os.path.exists(os.path.join(sys.prefix, p))
               for p in ("include/oneapi/ccl.hpp", "lib/libccl.so.1"))


def run_cmake(output_dir, keyed):
    """Configures (when needed) and builds; keyed: in build/env-<hash>, else
    in build/inplace."""
    torch, isolated = _torch()
    cmake, ninja = _tool("cmake"), _tool("ninja")
    ccl = _ccl_mode()
    env_key = {"prefix": sys.prefix, "python": sys.executable,
               "torch": os.path.dirname(torch.__file__), "torch_version": torch.__version__}
    tmp = None
    build_dir = os.path.join(ROOT, "build", "inplace")
    if keyed:
        digest = hashlib.sha256(json.dumps(env_key, sort_keys=True).encode()).hexdigest()[:12]
        if isolated:  # its torch vanishes with the build: nothing to reuse later
            build_dir = tmp = tempfile.mkdtemp(prefix="ipex_train-cmake-")
        else:
            build_dir = os.path.join(ROOT, "build", f"env-{digest}")
    os.makedirs(build_dir, exist_ok=True)
    config = dict(env_key, output=output_dir, ccl=ccl, oneccl=_oneccl_present())
    stamp = os.path.join(build_dir, "ipex_train-config.json")
    try:
        with open(stamp) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if old is not None and any(old.get(k) != v for k, v in env_key.items()):
        _log(f"{build_dir} was configured for another environment or torch: configuring afresh")
        if os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            os.remove(os.path.join(build_dir, "CMakeCache.txt"))
        shutil.rmtree(os.path.join(build_dir, "CMakeFiles"), ignore_errors=True)
    try:
        if old != config or not os.path.exists(os.path.join(build_dir, "build.ninja")):
            subprocess.check_call([
                cmake, "-S", ROOT, "-B", build_dir, "-G", "Ninja",
                f"-DCMAKE_MAKE_PROGRAM={ninja}",
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-DIPT_OUTPUT_DIR={output_dir}",
                f"-DIPT_CCL={ccl.upper()}",
            ])
            with open(stamp, "w") as f:
                json.dump(config, f)
        jobs = os.environ.get("IPEX_TRAIN_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call([cmake, "--build", build_dir, "--", f"-j{jobs}"])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(output_dir, "_build.json")) as f:
        _log(f"ccl process group: {json.load(f)['ccl']}")


class BuildNative(Command):
    """python setup.py build_native: build the native libraries in place."""

    description = "build ipex_train's native libraries into the source tree"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        run_cmake(os.path.join(ROOT, "ipex_train"), keyed=False)


class CMakeBuildExt(build_ext):
    def run(self):
        if os.environ.get("IPEX_TRAIN_SKIP_NATIVE") == "1":
            return
        if self.inplace:  # also `pip install -e .` (setuptools sets inplace for editables)
            run_cmake(os.path.join(ROOT, "ipex_train"), keyed=False)
        else:
            run_cmake(os.path.join(os.path.abspath(self.build_lib), "ipex_train"), keyed=True)


setup(
    # a placeholder that marks the distribution as platform-specific; CMake builds the files
    ext_modules=[Extension("ipex_train._C", sources=[])],
    cmdclass={"build_ext": CMakeBuildExt, "build_native": BuildNative},
    zip_safe=False,
)
