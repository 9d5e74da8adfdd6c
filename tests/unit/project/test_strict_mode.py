"""Strict mode of ``tests/conftest.py`` (``VIT_ADAPTER_DS_STRICT=1``, CI): run on a hand-written file of outcomes in
a child pytest that uses a copy of the conftest; the expected result of each test is written out below."""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

CASES = '''
import pytest


def test_passes():
    pass


def test_missing_reference():
    pytest.skip("reference missing: somepackage not importable")


def test_no_cuda():
    pytest.skip("needs a CUDA device")


@pytest.mark.gpu
def test_gpu_marked():
    pytest.skip("whatever the reason")


@pytest.mark.xfail(reason="known bug")
def test_xfail_hides_an_import_error():
    import a_reference_that_is_not_installed  # noqa: F401


@pytest.mark.xfail(reason="known bug")
def test_xpass():
    pass


def test_imperative_xfail():
    pytest.xfail("not yet")


@pytest.mark.xfail(strict=True, reason="strict marker")
def test_strict_xpass():
    pass
'''

# test -> (outcome in strict mode, a text its report must hold)
EXPECTED = {
    "test_passes": ("passed", ""),
    "test_missing_reference": ("failed", "a skip is a failure"),
    "test_no_cuda": ("skipped", "needs a CUDA device"),
    "test_gpu_marked": ("skipped", "whatever the reason"),
    "test_xfail_hides_an_import_error": ("failed", "xfailed (known bug)"),
    "test_xpass": ("failed", "xpassed (known bug)"),
    "test_imperative_xfail": ("failed", "xfailed (not yet)"),
    "test_strict_xpass": ("failed", "XPASS(strict)"),
}


def _outcomes(xml_path):
    out = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name, result = case.get("name"), ("passed", "")
        for child in case:
            if child.tag in ("failure", "error"):
                result = ("failed", (child.get("message") or "") + (child.text or ""))
                break
            if child.tag == "skipped":
                result = ("skipped", (child.get("message") or "") + (child.text or ""))
        out[name] = result
    return out


def test_strict_mode_fails_skipped_references_and_every_xfail(tmp_path):
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    shutil.copy(os.path.join(here, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "support.py").write_text("")  # the conftest's fixture imports it lazily
    (tmp_path / "launching.py").write_text("def prune_stale_extension_locks():\n    pass\n")  # its autouse fixture
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    (tmp_path / "test_cases.py").write_text(CASES)
    xml = tmp_path / "report.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                        str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), f"--junitxml={xml}",
                        str(tmp_path / "test_cases.py")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, VIT_ADAPTER_DS_STRICT="1", OMP_NUM_THREADS="1"))
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    got = _outcomes(xml)
    assert sorted(got) == sorted(EXPECTED), p.stdout[-3000:]
    for name, (outcome, text) in EXPECTED.items():
        assert got[name][0] == outcome and text in got[name][1], (name, got[name])
