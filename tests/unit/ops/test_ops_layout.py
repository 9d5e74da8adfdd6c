"""Where ``vit_adapter_ds.ops`` loads its kernels from (``vit_adapter_ds/ops/__init__.py``).

* in a checkout, from that checkout's ``ops/`` folder -- also when another checkout is installed (editable);
* ``import ops`` from the repository root is an empty namespace package, never this project's op, and it does
  not shadow another project's regular ``ops`` package (e.g. the official ViT-Adapter's);
* a wheel carries the ``ops/`` sources (CUDA ``csrc/`` included) inside ``vit_adapter_ds/ops/``.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vit_adapter_ds
import vit_adapter_ds.ops as msda_ops
from vit_adapter_ds.ops import build, cuda_ext, msda, reference

REPO = Path(__file__).resolve().parents[3]
CSRC_FILES = ["ms_deform_attn.cpp", "ms_deform_attn_cuda.cu", "ms_deform_attn_kernels.cuh"]


def _run(code, cwd, pythonpath=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _copy_tree(dest: Path, with_setup=False) -> Path:
    """The files a clone needs to import vit_adapter_ds.ops (the package skeleton and ops/)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    (dest / "vit_adapter_ds" / "ops").mkdir(parents=True)
    shutil.copy(REPO / "vit_adapter_ds" / "__init__.py", dest / "vit_adapter_ds" / "__init__.py")
    shutil.copy(REPO / "vit_adapter_ds" / "ops" / "__init__.py", dest / "vit_adapter_ds" / "ops" / "__init__.py")
    shutil.copytree(REPO / "ops", dest / "ops", ignore=ignore)
    if with_setup:
        shutil.copy(REPO / "setup.py", dest / "setup.py")
    return dest


def test_kernels_come_from_the_importing_checkout():
    ops_dir = Path(vit_adapter_ds.__file__).resolve().parents[1] / "ops"
    assert msda_ops.SOURCES_DIR == ops_dir
    for module in (msda, reference, cuda_ext, build):
        assert Path(module.__file__).resolve().parent == ops_dir, module.__file__
    assert cuda_ext.CSRC == ops_dir / "csrc" and all((cuda_ext.CSRC / f).is_file() for f in CSRC_FILES)
    assert not (ops_dir / "__init__.py").exists(), "ops/ must not be a regular package (it would shadow others)"


def test_second_clone_on_pythonpath_uses_its_own_kernels(tmp_path):
    clone = _copy_tree(tmp_path / "clone")
    with open(clone / "ops" / "msda.py", "a") as f:
        f.write("\nCLONE_MARKER = 'second clone'\n")
    out = _run("import vit_adapter_ds.ops as o, vit_adapter_ds.ops.msda as m, vit_adapter_ds.ops.cuda_ext as c\n"
               "print(o.__file__); print(m.__file__); print(c.CSRC); print(m.CLONE_MARKER)",
               cwd=tmp_path, pythonpath=[clone])
    init, msda_file, csrc, marker = out.split("\n")[:4]
    root = str(clone.resolve())
    assert init.startswith(root) and msda_file.startswith(root) and csrc.startswith(root), out
    assert marker == "second clone"


def test_import_ops_from_the_repo_root_is_not_this_package(tmp_path):
    out = _run("import ops\nprint(ops.__file__, hasattr(ops, 'ms_deform_attn'))\n"
               "try:\n    import ops.msda\nexcept ImportError as err:\n    print('refused:', err)\n",
               cwd=REPO)
    assert out.splitlines()[0] == "None False", out  # an empty namespace package
    assert "refused:" in out and "vit_adapter_ds.ops" in out, out
    other = tmp_path / "official" / "ops"  # another project's regular package named ``ops``
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("OFFICIAL = True\n")
    out = _run("import ops; print(ops.OFFICIAL)", cwd=REPO, pythonpath=[tmp_path / "official"])
    assert out.strip() == "True"


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                    reason="building a wheel without network needs setuptools installed")
def test_wheel_carries_the_kernel_sources(tmp_path):
    src = _copy_tree(tmp_path / "src", with_setup=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ["msda.py", "checks.py", "reference.py", "triton_msda.py", "cuda_ext.py", "build.py", "README.md",
                 *(f"csrc/{f}" for f in CSRC_FILES)]:
        assert f"vit_adapter_ds/ops/{name}" in names, (name, names)
    assert not any(n.startswith("ops/") for n in names), names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = _run("import torch, vit_adapter_ds.ops as o\n"
               "from vit_adapter_ds.ops import cuda_ext, ms_deform_attn\n"
               "print(o.SOURCES_DIR); print(cuda_ext.CSRC)\n"
               "v = torch.ones(1, 4, 1, 2); loc = torch.full((1, 3, 1, 1, 1, 2), 0.5); a = torch.ones(1, 3, 1, 1, 1)\n"
               "print(ms_deform_attn(v, [(2, 2)], [0], loc, a).sum().item())",
               cwd=tmp_path, pythonpath=[site])
    sources, csrc, total = out.split("\n")[:3]
    assert sources == str((site / "vit_adapter_ds" / "ops").resolve()), out
    assert csrc == str((site / "vit_adapter_ds" / "ops" / "csrc").resolve())
    assert float(total) == 6.0  # 3 queries x 2 channels of a constant-1 map sampled inside
