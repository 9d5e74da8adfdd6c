"""Test-session settings.

``VIT_ADAPTER_DS_STRICT=1`` (set by ``.ci/run``): a test that skips is a failure, except tests that need a GPU (marked
``gpu``, or skipped because no CUDA device is present) and the few skips that describe a deliberate mode of the run
(``ALLOWED_SKIPS``). So in CI a reference that cannot be imported (mmseg, mmengine, webdataset, cv2, triton, nvcc, a
SLURM that cannot start...) fails the run instead of silently testing less. An xfail or an xpass fails as well: an
expected failure may hide a missing reference (an ImportError inside the test) as easily as the bug it names.
"""
import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TESTS = os.path.dirname(os.path.abspath(__file__))
# tests/helpers holds what test files share (support.py, the stub task, the launch helpers, the parity harness);
# test folders are importable by module name (test files are unique by name over the whole tree)
sys.path.insert(0, os.path.join(TESTS, "helpers"))
for _dirpath, _dirs, _files in sorted(os.walk(TESTS)):
    _dirs[:] = sorted(d for d in _dirs if d not in ("helpers", "__pycache__"))
    if _dirpath != TESTS and any(f.startswith("test_") and f.endswith(".py") for f in _files):
        sys.path.append(_dirpath)

STRICT = os.environ.get("VIT_ADAPTER_DS_STRICT", "0") not in ("", "0")
# skips that are a property of the machine's accelerator or of the run's mode, never of a missing reference
ALLOWED_SKIPS = ("needs a CUDA device", "GiB of GPU memory", "TRITON_INTERPRET is set", "interpreter set globally")


def _strict_failure(report, reason: str, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{what} was skipped ({reason}); with VIT_ADAPTER_DS_STRICT=1 (CI) a skip is a failure: "
                       "install the reference or fix the test")


def _reason(report) -> str:
    lr = report.longrepr
    return str(lr[2] if isinstance(lr, tuple) and len(lr) == 3 else lr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not STRICT:
        return
    if hasattr(report, "wasxfail"):
        # an expected failure hides whatever made it fail -- a missing reference (ImportError) as much as the
        # known bug it was written for -- and an unexpected pass hides a fixed one: strict mode allows neither
        what = "xfailed" if report.skipped else "xpassed"
        reason = report.wasxfail
        del report.wasxfail
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} {what} ({reason or 'xfail'}); with VIT_ADAPTER_DS_STRICT=1 (CI) an xfail "
                           "or xpass is a failure: fix the code or the test instead of marking it")
        return
    if not report.skipped:
        return
    reason = _reason(report)
    if item.get_closest_marker("gpu") is not None or any(a in reason for a in ALLOWED_SKIPS):
        return
    _strict_failure(report, reason, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not any(a in _reason(report) for a in ALLOWED_SKIPS):
        _strict_failure(report, _reason(report), collector.nodeid)


_SERIAL_GROUPS = {  # folder under tests/ -> the pytest-xdist group whose tests run one after another on one worker
    os.path.join("integration", "cluster"): "cluster",  # one local SLURM, the vads* network namespaces, one sshd
}


def pytest_collection_modifyitems(config, items):
    """The README's test command runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``): tests that
    bring up a machine-wide service share a group, so xdist runs them on one worker one after another (without xdist
    the marker does nothing)."""
    for item in items:
        rel = os.path.relpath(str(item.path), TESTS)
        for folder, group in _SERIAL_GROUPS.items():
            if rel.startswith(folder + os.sep):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def free_port():
    """``free_port()`` of ``tests/helpers/support.py``: a fresh unused TCP port for each call."""
    from support import free_port as pick

    return pick


@pytest.fixture(scope="session", autouse=True)
def _no_stale_extension_locks():
    """A killed JIT build of an op leaves a lock that blocks every later build: remove stale ones once per session."""
    from launching import prune_stale_extension_locks

    prune_stale_extension_locks()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """``synthetic_shards(layout, num_train, num_val, size)``: the built-in synthetic shards of ``layout``
    (``ade20k``, ``cocostuff`` or ``coco``), written once per session for each set of arguments, in
    ``<dir>/train`` and ``<dir>/val``. Shared: treat as read-only (copy before corrupting)."""
    from launching import make_synthetic_shards

    made = {}

    def get(layout="ade20k", num_train=32, num_val=6, size=(64, 96)):
        key = (layout, num_train, num_val, tuple(size))
        if key not in made:
            out = tmp_path_factory.mktemp(f"{layout}_shards") / "synthetic"
            made[key] = make_synthetic_shards(out, layout, num_train, num_val, size)
        return made[key]

    return get


@pytest.fixture(scope="session")
def seg_shards(synthetic_shards):
    """Synthetic semantic-segmentation shards (ADE20K layout, 8 classes): 32 train / 6 val images of 64 x 96."""
    return synthetic_shards("ade20k", 32, 6, (64, 96))


@pytest.fixture(scope="session")
def coco_shards(synthetic_shards):
    """Synthetic COCO instance shards (boxes, masks): 16 train / 4 val images of 96 x 128."""
    return synthetic_shards("coco", 16, 4, (96, 128))
