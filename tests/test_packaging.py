"""Packaging: one version string, the launcher inside the package, no absolute
paths in the native libraries, the ccl build switch; and, with
IPEX_TRAIN_TEST_PACKAGING=1 (`make test-packaging`, 1-2 min with ccache warm,
several without), `pip install .` of this checkout into a fresh venv."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import ipex_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(ipex_train.__file__))
NATIVE = ("_C.so", "_lookup.so", "_ccl.so", "libccl.so.2")


def _bare_env():
    """The environment minus what points Python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _runpaths(lib):
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    paths = []
    for m in re.finditer(r"\((RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out):
        paths += m.group(2).split(":")
    return paths


def check_relocatable(pkg_dir, forbidden):
    """Every run path of the package's libraries is $ORIGIN-relative and none
    of the `forbidden` paths appears anywhere in their bytes."""
    libs = [os.path.join(pkg_dir, n) for n in NATIVE if os.path.exists(os.path.join(pkg_dir, n))]
    assert any(lib.endswith("_C.so") for lib in libs), f"no _C.so in {pkg_dir}"
    for lib in libs:
        bad = [p for p in _runpaths(lib) if not p.startswith("$ORIGIN")]
        assert not bad, f"{lib}: absolute run paths {bad}"
        data = open(lib, "rb").read()
        for path in forbidden:
            assert path.encode() not in data, f"{lib} contains the build path {path}"


def test_version_has_one_source():
    import tomllib

    from ipex_train.version import __version__
    assert ipex_train.__version__ is __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "ipex_train.version.__version__"}
    # nowhere else: no second literal to drift
    hits = []
    for dirpath, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                if re.search(r"^__version__\s*=", open(path).read(), re.M):
                    hits.append(os.path.relpath(path, ROOT))
    assert hits == [os.path.join("ipex_train", "version.py")]
    assert not re.search(r"\bversion\s*=", open(os.path.join(ROOT, "setup.py")).read())


def test_only_ipex_train_is_packaged():
    import tomllib

    from setuptools import find_packages
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    pkgs = find_packages(ROOT, include=find["include"])
    assert "ipex_train.launch" in pkgs
    assert all(p == "ipex_train" or p.startswith("ipex_train.") for p in pkgs), pkgs


def test_native_libraries_have_no_absolute_paths():
    check_relocatable(PKG, {ROOT, os.path.dirname(torch.__file__), sys.prefix})


def test_launcher_as_module_and_console_script(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ipex_train.launch", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: ipex-train-run") and "--nproc-per-node" in p.stdout
    script = os.path.join(os.path.dirname(sys.executable), "ipex-train-run")
    assert os.path.exists(script), f"{script} missing: `make setup` installs ipex_train"
    p = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--nproc-per-node" in p.stdout


def test_no_top_level_launchers_package(tmp_path):
    # -I: only what is installed in the environment (no PYTHONPATH, no cwd)
    p = subprocess.run([sys.executable, "-I", "-c", "import launchers"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "No module named 'launchers'" in p.stderr, p.stderr


def test_install_extra_runs_by_path_before_install():
    # stdlib only: usable from a checkout before ipex_train is built
    p = subprocess.run([sys.executable, os.path.join(PKG, "install_extra.py"), "ccl", "--devel",
                        "--dry-run"], capture_output=True, text=True, timeout=60, env=_bare_env())
    assert p.returncode == 0, p.stderr
    assert "install --no-deps oneccl-cpu==2022.2.0 oneccl-cpu-devel==2022.2.0" in p.stdout
    assert f"constraint torch=={torch.__version__}" in p.stdout


def _tool(name):
    try:
        mod = __import__(name)
        return os.path.join(mod.CMAKE_BIN_DIR if name == "cmake" else mod.BIN_DIR, name)
    except ImportError:
        return shutil.which(name) or pytest.fail(f"{name} not found")


@pytest.fixture(scope="module")
def python_without_oneccl(tmp_path_factory):
    """A Python whose sys.prefix holds no oneCCL: a bare venv."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    return str(venv / "bin" / "python")


def _configure(tmp_path, python, mode):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    p = subprocess.run([_tool("cmake"), "-S", ROOT, "-B", str(tmp_path / "b"), "-G", "Ninja",
                        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
                        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                        f"-DPython_EXECUTABLE={python}", f"-DIPT_OUTPUT_DIR={out}",
                        f"-DIPT_CCL={mode}"], capture_output=True, text=True, timeout=300)
    status = None
    if p.returncode == 0:
        with open(tmp_path / "b" / "_build.json") as f:
            status = json.load(f)["ccl"]
    return p, status


def test_ccl_switch_on_fails_without_oneccl(tmp_path, python_without_oneccl):
    p, _ = _configure(tmp_path, python_without_oneccl, "ON")
    assert p.returncode != 0
    assert "IPEX_TRAIN_CCL=on but the ccl process group cannot be built" in p.stderr
    assert "oneCCL" in p.stderr and "install_extra.py ccl" in p.stderr


def test_ccl_switch_auto_says_what_it_skipped(tmp_path, python_without_oneccl):
    p, status = _configure(tmp_path, python_without_oneccl, "AUTO")
    assert p.returncode == 0, p.stderr
    assert "ccl process group NOT built" in p.stderr
    assert status.startswith("skipped: oneCCL") and "not found" in status


def test_ccl_switch_off_skips_and_clears_stale_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_ccl.so").write_bytes(b"stale")  # from an earlier build with ccl
    p, status = _configure(tmp_path, sys.executable, "OFF")
    assert p.returncode == 0, p.stderr
    assert status.startswith("skipped: off") and "NOT built" not in p.stderr
    assert not (out / "_ccl.so").exists()
    p, _ = _configure(tmp_path, sys.executable, "MAYBE")
    assert p.returncode != 0 and "IPT_CCL=MAYBE" in p.stderr


_FRESH_CHECK = textwrap.dedent("""
    import os, sys, torch
    import ipex_train
    assert ipex_train.__file__.startswith(sys.prefix), ipex_train.__file__
    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 33)
    ours = torch.nn.Linear(64, 33)
    ours.load_state_dict(ref.state_dict())
    opts = [torch.optim.AdamW(ref.parameters(), lr=0.1),
            ipex_train.optim.AdamW(ours.parameters(), lr=0.1)]
    x = torch.randn(8, 64)
    for m, opt in zip((ref, ours), opts):
        for _ in range(3):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b)
    emb = ipex_train.sparse.FusedEmbeddingBag(10, 4, mode="sum", lr=0.5)
    w = emb.weight.clone()
    emb(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).sum().backward()  # _lookup.so's node
    assert torch.equal(emb.weight[4:], w[4:]) and not torch.equal(emb.weight[1:4], w[1:4])
    print("fused step ok", ipex_train.__version__, os.path.dirname(ipex_train.__file__))
""")


@pytest.mark.skipif(os.environ.get("IPEX_TRAIN_TEST_PACKAGING") != "1",
                    reason="slow: set IPEX_TRAIN_TEST_PACKAGING=1 (make test-packaging)")
def test_pip_install_into_fresh_venv(tmp_path):
    """pip install . (no build isolation, offline) into a venv that sees this
    environment's torch, setuptools, cmake and ninja through a .pth line; then
    the installed package works from outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig
    with open(os.path.join(site, "_reuse_parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(_bare_env(), IPEX_TRAIN_CCL="off")
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q",
                            "--no-build-isolation", "--no-deps", "--no-index", ROOT],
                           env=env, capture_output=True, text=True, timeout=1800)
    finally:  # the build directory keyed on this throw-away venv
        for d in glob.glob(os.path.join(ROOT, "build", "env-*")):
            try:
                with open(os.path.join(d, "ipex_train-config.json")) as f:
                    mine = json.load(f)["prefix"] == str(venv)
            except (OSError, ValueError, KeyError):
                mine = False
            if mine:
                shutil.rmtree(d, ignore_errors=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    installed = os.path.join(site, "ipex_train")
    check_relocatable(installed, {ROOT, sys.prefix, str(venv)})
    with open(os.path.join(installed, "_build.json")) as f:
        assert json.load(f)["ccl"].startswith("skipped: off")

    def run(*cmd):
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        return r.returncode, r.stdout + r.stderr

    rc, out = run(py, "-c", _FRESH_CHECK)
    assert rc == 0 and "fused step ok" in out and installed in out, out
    rc, out = run(str(venv / "bin" / "ipex-train-run"), "--help")
    assert rc == 0 and "--nproc-per-node" in out, out
    rc, out = run(py, "-m", "ipex_train.launch", "--help")
    assert rc == 0 and "--nproc-per-node" in out, out
    rc, out = run(py, "-c", "import launchers")
    assert rc != 0 and "No module named 'launchers'" in out, out
    rc, out = run(py, "-c", "import ipex_train.distributed._lib as l; l.load()")
    assert rc != 0 and "built without its ccl process group (skipped: off" in out, out
