"""``ops/build.py`` (``python -m vit_adapter_ds.ops.build [--verbose]``): its argument handling and report.

The compile itself (``cuda_ext.build`` -> ``torch.utils.cpp_extension.load``, ~1.5 min cold) is exercised by
``test_ops_cuda_build.py::test_extension_builds``; here ``cuda_ext.build`` is replaced by a recorder, and the module
entry point runs in a subprocess only for ``--help`` and a bad option (no compile)."""
import os
import subprocess
import sys
import types

import pytest
import torch

from vit_adapter_ds.ops import build, cuda_ext


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    calls = []
    so = tmp_path / "vit_adapter_ds_msda.so"

    def fake(verbose=False):
        calls.append(verbose)
        return types.SimpleNamespace(__file__=str(so))

    monkeypatch.setattr(cuda_ext, "build", fake)
    return calls, so


@pytest.mark.parametrize("argv,verbose", [([], False), (["--verbose"], True)])
def test_main_builds_and_reports(fake_build, monkeypatch, capsys, argv, verbose):
    calls, so = fake_build
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no device capability added
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert build.main(argv) == 0
    assert calls == [verbose]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith("built vit_adapter_ds_msda in ") and out[0].endswith(f" s: {so}")
    # DEFAULT_ARCHS 80 and 90 as SASS, plus compute_90 PTX (written out: what the build passes to nvcc)
    assert out[1] == ("nvcc arch flags: ['-gencode=arch=compute_80,code=sm_80', "
                      "'-gencode=arch=compute_90,code=sm_90', '-gencode=arch=compute_90,code=compute_90']")


def test_main_with_an_arch_list_leaves_the_flags_to_torch(fake_build, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build.main([]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "nvcc arch flags: from TORCH_CUDA_ARCH_LIST"


def test_bad_option_is_refused_before_building(fake_build, capsys):
    calls, _ = fake_build
    with pytest.raises(SystemExit) as e:
        build.main(["--jobs", "4"])
    assert e.value.code == 2 and calls == []
    assert "unrecognized arguments: --jobs 4" in capsys.readouterr().err


def test_module_entry_point_help():
    p = subprocess.run([sys.executable, "-m", "vit_adapter_ds.ops.build", "--help"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Explicit, opt-in build of the CUDA extension" in p.stdout and "--verbose" in p.stdout
