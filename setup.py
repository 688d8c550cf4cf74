"""Packaging for ipex_train.

setup.py drives CMakeLists.txt: `python setup.py build_native` configures a
persistent build/ directory once and then rebuilds incrementally with ninja;
`pip install -e .` does the same through build_ext. The native libraries land
inside the ipex_train package (ipex_train/_C.so, ...).
"""
import os
import subprocess
import sys

from setuptools import Command, Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cmake():
    # Prefer the pinned cmake/ninja of the environment running setup.py.
    here = os.path.join(os.path.dirname(sys.executable), "cmake")
    return here if os.path.exists(here) else "cmake"


def run_cmake(output_dir, build_dir=os.path.join(ROOT, "build")):
    import torch  # the build needs torch's CMake config; torch is pinned in requirements.txt

    os.makedirs(build_dir, exist_ok=True)
    env_bin = os.path.dirname(sys.executable)
    os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        cmd = [
            _cmake(), "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DIPT_OUTPUT_DIR={output_dir}",
        ]
        subprocess.check_call(cmd)
    jobs = os.environ.get("IPEX_TRAIN_BUILD_JOBS", str(os.cpu_count() or 2))
    subprocess.check_call([_cmake(), "--build", build_dir, "--", f"-j{jobs}"])


class BuildNative(Command):
    """python setup.py build_native: build the native libraries in place."""

    description = "build ipex_train's native libraries into the source tree"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        run_cmake(os.path.join(ROOT, "ipex_train"))


class CMakeBuildExt(build_ext):
    def run(self):
        if os.environ.get("IPEX_TRAIN_SKIP_NATIVE") == "1":
            return
        if self.inplace:
            run_cmake(os.path.join(ROOT, "ipex_train"))
        else:
            out = os.path.join(os.path.abspath(self.build_lib), "ipex_train")
            run_cmake(out, build_dir=os.path.join(os.path.abspath(self.build_temp), "cmake"))


setup(
    name="ipex_train",
    version="0.1.0",
    description="CPU training accelerator for PyTorch: fused optimizers, BF16 split "
    "training, sparse embeddings, a oneCCL process group",
    packages=find_packages(include=["ipex_train", "ipex_train.*"]),
    python_requires=">=3.10",
    install_requires=["torch==2.13.0"],
    ext_modules=[Extension("ipex_train._C", sources=[])],
    cmdclass={"build_ext": CMakeBuildExt, "build_native": BuildNative},
    entry_points={"console_scripts": ["ipex-train-run=ipex_train.launch:main"]},
    zip_safe=False,
)
